"""`train.from_yolo`: the args.yaml a `yolo train` run wrote (or a hyp yaml with its keys) as yolo-ddp overrides.

Every key of Ultralytics' `cfg/default.yaml` has one fate here, and README "Bring your yolo train recipe" lists
them: carried to our key (with its value, defaults included, so the recipe replaces our profiles), carried after
a conversion, ignored because it does not concern detection training (listed once), or refused with the reason
when its value asks for something yolo-ddp does not do. Command-line overrides win over the file.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from yolo_ddp.config.data import cache_mode

# Carried as they are: Ultralytics key -> ours.
SAME: dict[str, str] = {
    **{k: f"train.{k}" for k in (
        "epochs", "time", "patience", "save_period", "optimizer", "seed", "deterministic", "cos_lr", "freeze",
        "multi_scale", "lr0", "lrf", "momentum", "weight_decay", "warmup_epochs", "warmup_momentum",
        "warmup_bias_lr", "box", "cls", "dfl", "cls_pw", "nbs", "iou", "max_det")},
    **{k: f"data.{k}" for k in (
        "imgsz", "workers", "single_cls", "classes", "fraction", "close_mosaic", "hsv_h", "hsv_s", "hsv_v", "degrees",
        "translate", "scale", "shear", "perspective", "flipud", "fliplr", "bgr", "mosaic", "mixup", "cutmix")},
    "cls_remap": "model.cls_remap",
    "plots": "logger.plots",
    "data": "data.path",
}
# Converted by `_convert` (value-dependent targets).
CONVERTED = ("model", "pretrained", "batch", "amp", "conf", "val", "compile", "channels_last", "cache")
# Nothing to carry: where the run goes, which devices, prediction/export/tracking, and what yolo-ddp always does.
NOT_TRAINING: dict[str, str] = {
    **dict.fromkeys(("device",), "devices come from the launcher (launcher.nproc_per_node, CUDA_VISIBLE_DEVICES)"),
    **dict.fromkeys(("project", "name", "exist_ok", "save_dir"), "run dirs are Hydra's (hydra.run.dir)"),
    **dict.fromkeys(("mode", "verbose", "profile", "cfg"), "not a training setting (an args.yaml holds cfg's values)"),
    "save": "yolo-ddp always writes last.pt and best.pt",
    **dict.fromkeys((
        "source", "vid_stride", "stream_buffer", "visualize", "augment", "agnostic_nms", "retina_masks", "embed",
        "show", "save_frames", "save_txt", "save_conf", "save_crop", "show_labels", "show_conf", "show_boxes",
        "line_width", "dnn", "nms", "format", "optimize", "dynamic", "simplify", "opset", "workspace", "tracker"),
        "a predict/export/track setting"),
    **dict.fromkeys(("overlap_mask", "mask_ratio", "dropout", "pose", "kobj", "rle", "angle", "dlog", "dgrad", "dlam",
                     "auto_augment", "erasing", "copy_paste_mode"),
                    "another task's setting, which `yolo train` ignores for detection too"),
    "dis": "the distillation loss weight, used only with distill_model (refused)",
}
# Refused unless at their default: (default, why).
REFUSED: dict[str, tuple[Any, str]] = {
    "task": ("detect", "yolo-ddp trains detection models only"),
    "rect": (False, "rectangular training batches turn off shuffling and mosaic, and under DDP Ultralytics' own "
                    "sampler interleaves them so ranks mix shapes; validation is rectangular already (data.val_rect)"),
    "resume": (False, "an Ultralytics last.pt holds its trainer's state, not ours; start from its weights with "
                      "model.weights=<run>/weights/last.pt"),
    "split": ("val", "yolo-ddp validates on the data set's val split"),
    "save_json": (False, "no COCO-JSON predictions or pycocotools scoring; mAP is Ultralytics' DetMetrics"),
    "quantize": (None, "quantization-aware training is not implemented"),
    "copy_paste": (0.0, "copy-paste pastes segmentation polygons; yolo-ddp trains detection boxes only"),
    "distill_model": (None, "knowledge distillation is not implemented"),
}


@dataclass
class Translation:
    source: Path
    overrides: dict[str, Any] = field(default_factory=dict)  # our key -> value
    mapped: list[tuple[str, Any, str]] = field(default_factory=list)  # (their key, their value, our key=value)
    ignored: dict[str, str] = field(default_factory=dict)  # their key -> why
    refused: dict[str, str] = field(default_factory=dict)  # their key=value -> why
    overridden: list[str] = field(default_factory=list)  # our keys the command line sets instead

    def set(self, key: str, value: Any, theirs: str, their_value: Any) -> None:
        self.overrides[key] = value
        self.mapped.append((theirs, their_value, f"{key}={hydra_value(value)}"))

    def command_line(self, given: list[str]) -> list[str]:
        """Our overrides as Hydra strings, minus the keys `given` (the user's overrides) sets: those win."""
        taken = {o.split("=", 1)[0].lstrip("+~") for o in given if "=" in o}
        self.overridden = sorted(k for k in self.overrides if k in taken)
        return [f"{k}={hydra_value(v)}" for k, v in self.overrides.items() if k not in taken]

    def describe(self, final: dict[str, Any] | None = None) -> str:
        """The mapping, one key per line; `final` (the run's config as a dict) marks what the command line changed."""
        if final is not None:
            self.overridden = sorted(k for k, v in self.overrides.items() if _lookup(final, k) != v)
        rows = [f"train.from_yolo={self.source}:"]
        rows += [f"  {f'{theirs}={their!r}':<30} -> {ours}" for theirs, their, ours in self.mapped]
        if self.overridden:
            rows.append(f"  the command line wins for: {', '.join(self.overridden)}")
        if self.ignored:
            rows.append(f"  ignored, not detection training: {', '.join(sorted(self.ignored))}")
        return "\n".join(rows)

    def refusal(self) -> str | None:
        if not self.refused:
            return None
        items = "; ".join(f"{k} ({why})" for k, why in self.refused.items())
        return (f"train.from_yolo={self.source}: yolo-ddp cannot honour {len(self.refused)} setting(s): {items}. "
                "Set them to their defaults in a copy of that file (or remove them), then run again; nothing "
                "was started.")


def _lookup(tree: dict[str, Any], key: str) -> Any:
    for part in key.split("."):
        tree = tree.get(part) if isinstance(tree, dict) else None
    return list(tree) if isinstance(tree, tuple) else tree


def hydra_value(v: Any) -> str:
    if v is None:
        return "null"
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (int, float)):
        return repr(v)
    if isinstance(v, (list, tuple)):
        return "[" + ",".join(hydra_value(x) for x in v) + "]"
    s = str(v)
    return s if re.fullmatch(r"[\w./@:-]+", s) and s not in ("null", "true", "false") else "'" + s.replace("'", "\\'") + "'"


def _model(t: Translation, args: dict[str, Any]) -> None:
    model, pretrained = args.get("model"), args.get("pretrained", True)
    if model:
        path = Path(str(model)).expanduser()
        if path.suffix in (".yaml", ".yml"):
            t.set("model.cfg", str(model), "model", model)
        elif path.suffix == ".pt":
            if not path.is_file():
                t.refused[f"model={model}"] = ("the .pt is not on this machine and nothing is downloaded; copy it "
                                               "here and point model at it, or name a yaml (model=yolo11n.yaml)")
            else:
                t.set("model.cfg", _pt_yaml(path), "model", model)
                if pretrained is not False:
                    t.set("model.weights", str(path), "model", model)
        else:
            t.refused[f"model={model}"] = "name a model yaml (yolo11n.yaml) or a local .pt"
    if isinstance(pretrained, str) and pretrained:
        t.set("model.weights", pretrained, "pretrained", pretrained)


def _pt_yaml(path: Path) -> str:
    """The architecture an Ultralytics .pt was built from (its model's yaml_file), e.g. yolo11n.yaml."""
    from ultralytics.nn.tasks import load_checkpoint

    model, _ = load_checkpoint(str(path))
    return str(getattr(model, "yaml", {}).get("yaml_file") or f"{path.stem}.yaml")


def _convert(t: Translation, key: str, v: Any, args: dict[str, Any]) -> None:
    if key == "batch":
        if isinstance(v, float) and 0 < v < 1:  # a share of GPU memory: our planner's batch=auto with that share
            t.set("train.batch", "auto", key, v)
            t.set("train.memory_fraction", v, key, v)
        elif v == -1:
            t.set("train.batch", "auto", key, v)
        else:
            t.set("train.batch", int(v), key, v)
    elif key == "amp":
        t.set("train.amp", {True: "auto", False: "off"}.get(v, v) if isinstance(v, bool) else str(v), key, v)
    elif key == "conf" and v is not None:
        t.set("train.conf", float(v), key, v)
    elif key == "val":  # every epoch, or only the last, as yolo train val=True/False
        t.set("train.val_every", 1 if v is not False else int(args.get("epochs") or 100), key, v)
    elif key == "compile" and v not in (None, False):
        if v not in (True, "default"):
            t.refused[f"compile={v}"] = "train.compile uses torch.compile's default mode only"
        else:
            t.set("train.compile", True, key, v)
    elif key == "channels_last" and v is not None:
        t.set("train.channels_last", bool(v), key, v)
    elif key == "cache":  # one node-shared store instead of one copy per rank; same values
        mode = cache_mode(v)
        if mode is None:
            t.refused[f"cache={v}"] = "cache takes ram, disk, true or false"
        else:
            t.set("data.cache", mode or False, key, v)


def translate(path: str | Path, known: set[str] | None = None) -> Translation:
    """Read `path` and sort every key; `known` is Ultralytics' default.yaml keys (read from the install if None)."""
    p = Path(path).expanduser()
    if p.is_dir() and (p / "args.yaml").is_file():  # a yolo train run dir
        p = p / "args.yaml"
    if not p.is_file():
        raise FileNotFoundError(f"Config key 'train.from_yolo': {p} does not exist. Point it at the args.yaml a "
                                "`yolo train` run wrote (runs/detect/<name>/args.yaml) or at a hyp yaml.")
    try:
        args = yaml.safe_load(p.read_text(encoding="utf-8"))
    except (yaml.YAMLError, UnicodeDecodeError) as e:
        raise ValueError(f"Config key 'train.from_yolo': {p} is not valid YAML ({' '.join(str(e).split())}). "
                         "Fix it at that position.") from e
    if not isinstance(args, dict):
        raise ValueError(f"Config key 'train.from_yolo': {p} holds a {type(args).__name__}, not 'key: value' lines "
                         "as yolo train's args.yaml.")
    if known is None:
        from ultralytics.cfg import DEFAULT_CFG_DICT

        known = set(DEFAULT_CFG_DICT) | {"save_dir"}
    t = Translation(p.resolve())
    _model(t, args)
    for key, v in args.items():
        if key in ("model", "pretrained"):
            continue
        if key == "multi_scale" and isinstance(v, (int, float)):  # our list form, so the final config compares
            t.set(SAME[key], [1.0 - v, 1.0 + v] if v else [], key, v)
        elif key in SAME:
            if v is not None or key in ("classes", "freeze", "time"):
                t.set(SAME[key], v, key, v)
        elif key in CONVERTED:
            _convert(t, key, v, args)
        elif key in NOT_TRAINING:
            t.ignored[key] = NOT_TRAINING[key]
        elif key in REFUSED:
            default, why = REFUSED[key]
            if v != default and not (default is None and v in ("", None)):
                t.refused[f"{key}={v}"] = why
        else:
            t.refused[f"{key}={v}"] = ("not a `yolo train` argument of the installed Ultralytics (another version's "
                                       "or a typo)" if key not in known else "no yolo-ddp equivalent yet")
    return t
