"""`train.from_yolo`: the args.yaml a real `yolo train` run wrote becomes our config, key for key.

tests/fixtures/ultralytics/args.yaml was written by Ultralytics 8.4.190 itself:
  yolo train model=yolov8n.yaml data=<synthetic pcb data.yaml> epochs=1 imgsz=128 batch=8 fraction=0.1 patience=5
  freeze=3 degrees=5.0 mixup=0.1 flipud=0.2 cos_lr=True optimizer=AdamW lr0=0.002 workers=0 device=cpu
  plots=False project=/tmp/ultra name=train pretrained=False amp=False
"""

from __future__ import annotations

import dataclasses
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from hydra import compose
from ultralytics.cfg import DEFAULT_CFG_DICT

from launcher.__main__ import to_config
from launcher.recipe import apply_from_yolo
from tests.conftest import REPO
from yolo_ddp.config.from_yolo import CONVERTED, NOT_TRAINING, REFUSED, SAME, translate

ARGS = Path(__file__).parent / "fixtures/ultralytics/args.yaml"


def _lookup(cfg, key: str):
    for part in key.split("."):
        cfg = getattr(cfg, part)
    return cfg


def test_every_ultralytics_argument_has_a_fate() -> None:
    """Each key of the installed default.yaml is carried, converted, ignored or refused; no key twice."""
    groups = [set(SAME), set(CONVERTED), set(NOT_TRAINING), set(REFUSED)]
    assert sum(len(g) for g in groups) == len(set().union(*groups))
    assert set(DEFAULT_CFG_DICT) <= set().union(*groups)
    written = yaml.safe_load(ARGS.read_text())
    assert set(written) - {"save_dir"} == set(DEFAULT_CFG_DICT)  # the fixture is this Ultralytics' args.yaml


@pytest.mark.usefixtures("hydra_ctx")
def test_a_real_args_yaml_maps_key_for_key_and_the_command_line_wins() -> None:
    written = yaml.safe_load(ARGS.read_text())
    recipe = translate(ARGS)
    assert recipe.refusal() is None
    given = ["+experiment=pcb_defects", "train.epochs=3", "data.path="]
    cfg = to_config(compose(config_name="config",
                            overrides=[*recipe.command_line(given), *given, "run_dir=/tmp/x"]))
    assert recipe.overridden == ["data.path", "train.epochs"]
    assert translate(ARGS).describe(dataclasses.asdict(cfg)).count("command line wins for: data.path, train.epochs\n")
    assert cfg.train.epochs == 3 and cfg.data.path == ""  # ours win
    carried = {theirs for theirs, _, _ in recipe.mapped}
    assert carried | set(recipe.ignored) | {"time", "classes", "conf", "val", "compile", "channels_last", "cache",
                                            "pretrained", "save_dir"} | set(REFUSED) >= set(written)
    for key in set(SAME) - {"data", "epochs"}:  # carried as they are, defaults included
        assert _lookup(cfg, SAME[key]) == ([] if key == "multi_scale" else written[key]), key
    assert cfg.model.cfg == "yolov8n.yaml" and cfg.model.weights == ""
    assert (cfg.train.amp, cfg.train.batch, cfg.logger.plots) == ("off", 8, False)
    assert cfg.train.val_every == 1 and not cfg.train.compile  # val: true, compile: false
    assert set(recipe.ignored) >= {"device", "project", "name", "exist_ok", "source", "format", "save_dir"}


def test_what_cannot_be_honoured_is_one_refusal(tmp_path: Path) -> None:
    bad = yaml.safe_load(ARGS.read_text()) | {"rect": True, "copy_paste": 0.3, "task": "segment", "cache": "gpu",
                                             "fl_gamma": 1.5, "model": str(tmp_path / "missing.pt")}
    path = tmp_path / "args.yaml"
    path.write_text(yaml.safe_dump(bad))
    message = translate(path).refusal()
    for key in ("rect=True", "copy_paste=0.3", "task=segment", "cache=gpu", "fl_gamma=1.5", "missing.pt"):
        assert key in message
    assert message.count("train.from_yolo=") == 1 and "nothing was started" in message
    with pytest.raises(ValueError, match="rect=True"):
        apply_from_yolo(["launcher", f"train.from_yolo={path}"])
    with pytest.raises(FileNotFoundError, match="train.from_yolo"):
        translate(tmp_path / "nope.yaml")
    assert translate(tmp_path).source == path.resolve()  # a run dir: its args.yaml
    for theirs, ours in (("ram", "ram"), (True, "ram"), ("disk", "disk"), (False, False)):
        path.write_text(yaml.safe_dump(yaml.safe_load(ARGS.read_text()) | {"cache": theirs}))
        assert translate(path).overrides["data.cache"] == ours  # the node-shared store takes yolo train's values


def test_batch_fraction_val_false_and_a_local_pt(tmp_path: Path) -> None:
    from yolo_ddp.config import ModelConfig, TrainConfig
    from yolo_ddp.engine.checkpoint import save_ultralytics_weights
    from yolo_ddp.engine.model import build_model

    pt = tmp_path / "best.pt"
    save_ultralytics_weights(pt, build_model(ModelConfig(cfg="yolo11n.yaml"), {0: "a"}, TrainConfig(), 64), {}, 1,
                             0.0, 0)
    path = tmp_path / "hyp.yaml"
    path.write_text(yaml.safe_dump({"model": str(pt), "batch": 0.7, "val": False, "epochs": 40, "lr0": 0.02}))
    recipe = translate(path)
    assert recipe.overrides == {"model.cfg": "yolo11n.yaml", "model.weights": str(pt), "train.batch": "auto",
                                "train.memory_fraction": 0.7, "train.val_every": 40, "train.epochs": 40,
                                "train.lr0": 0.02}


@pytest.mark.slow
def test_launcher_prints_the_mapping_and_refuses_before_any_worker(tmp_path: Path) -> None:
    env = {**os.environ, "YOLO_DDP_OUTPUTS": str(tmp_path / "out"), "CUDA_VISIBLE_DEVICES": "", "YOLO_OFFLINE": "1"}
    base = [sys.executable, "-m", "launcher", "+experiment=pcb_defects", f"train.from_yolo={ARGS}", "data.path=",
            "train.epochs=2", f"data.cache_dir={tmp_path / 'cache'}", "data.synthetic.n_train=8",
            "data.synthetic.n_val=4"]
    proc = subprocess.run([*base, "plan=true"], capture_output=True, text=True, env=env, timeout=300, cwd=REPO)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "freeze=3" in proc.stdout and "-> train.freeze=3" in proc.stdout
    assert "the command line wins for: data.path, train.epochs" in proc.stdout
    bad = tmp_path / "args.yaml"
    bad.write_text(ARGS.read_text().replace("rect: false", "rect: true"))
    env["YOLO_DDP_OUTPUTS"] = str(tmp_path / "refused")
    proc = subprocess.run([*base[:4], f"train.from_yolo={bad}"], capture_output=True, text=True, env=env,
                          timeout=300, cwd=REPO)
    assert proc.returncode == 2 and "rect=True" in proc.stderr
    assert not (tmp_path / "refused").exists()  # refused before a run dir or worker


def test_the_readme_table_names_every_argument() -> None:
    text = (REPO / "README.md").read_text()
    table = text[text.index("| `yolo train` | yolo-ddp | note |"):]
    table = table[: table.index("\n\n")]
    missing = [k for k in DEFAULT_CFG_DICT if f"`{k}`" not in table]
    assert not missing, f"README's yolo train table lacks {missing}"
