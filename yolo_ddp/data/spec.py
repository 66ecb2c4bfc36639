"""Read an Ultralytics data.yaml (or a YOLO-format root holding one) into absolute paths and class names."""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

LOGGER = logging.getLogger(__name__)


class DataError(ValueError):
    """Bad user data: the message is one paragraph naming the file (and line or key) and the fix."""


@dataclass(frozen=True)
class DataSpec:
    yaml_path: Path
    root: Path
    train: list[Path]  # image files or directories or .txt lists, resolved to absolute paths
    val: list[Path]
    names: dict[int, str]

    @property
    def nc(self) -> int:
        return len(self.names)


def abspath_keep_links(p: str | Path, base: Path) -> Path:
    """Absolute without resolving symlinks: `img2label_paths` needs the user's `/images/` component intact."""
    q = Path(p).expanduser()
    return Path(os.path.abspath(q if q.is_absolute() else base / q))


def load_data_spec(path: str | Path) -> DataSpec:
    """Parse a data.yaml (or a YOLO root holding one) into absolute split sources and contiguous class names."""
    p = abspath_keep_links(path, Path.cwd())
    if p.is_dir():
        for name in ("data.yaml", "data.yml"):
            if (p / name).is_file():
                return load_data_spec(p / name)
        if (p / "images" / "train").is_dir() and (p / "images" / "val").is_dir():
            raise DataError(
                f"{p} looks like a YOLO-format root (images/train, images/val) but holds no data.yaml, so the class "
                f"names are unknown. Write {p / 'data.yaml'} with 'train: images/train', 'val: images/val' and "
                "'names: [...]' listing one name per class id."
            )
        raise DataError(
            f"{p} is a directory without a data.yaml and without images/train and images/val. Point the data path "
            "at an Ultralytics data.yaml, at a root holding images/train, images/val and a data.yaml with names, at "
            "a Pascal VOC folder (images and Annotations/**/*.xml) or at a COCO instances_*.json."
        )
    if not p.is_file():
        raise DataError(
            f"Dataset config {p} does not exist. Point the data path at an existing Ultralytics data.yaml."
        )
    try:
        cfg = yaml.safe_load(p.read_text(encoding="utf-8"))
    except (yaml.YAMLError, UnicodeDecodeError) as e:
        raise DataError(
            f"{p} is not valid YAML ({' '.join(str(e).split())}). Fix the syntax at that position."
        ) from e
    if not isinstance(cfg, dict):
        raise DataError(
            f"{p} must be a YAML mapping with keys 'path', 'train', 'val' and 'names', but it holds a "
            f"{type(cfg).__name__}. Rewrite it as 'key: value' lines."
        )
    names = _parse_names(cfg, p)
    root = _parse_root(cfg, p)
    return DataSpec(p, root, _parse_split(cfg, "train", root, p), _parse_split(cfg, "val", root, p), names)


def _parse_names(cfg: dict[str, Any], p: Path) -> dict[int, str]:
    raw = cfg.get("names")
    if not raw:
        raise DataError(
            f"{p} has no 'names' key (or it is empty). Add 'names:' with one class name per id, e.g. "
            "'names: [scratch, short]' or 'names: {0: scratch, 1: short}'."
        )
    if isinstance(raw, list):
        names = {i: str(n) for i, n in enumerate(raw)}
    elif isinstance(raw, dict):
        try:
            names = {int(k): str(v) for k, v in raw.items()}
        except (TypeError, ValueError) as e:
            raise DataError(
                f"{p}: 'names' keys must be integer class ids, got {list(raw)}. Use '0: name'."
            ) from e
        if sorted(names) != list(range(len(names))):
            raise DataError(
                f"{p}: 'names' keys must be the class ids 0..{len(names) - 1} without gaps, got {sorted(names)}. "
                "Renumber the classes (and the label files) contiguously from 0."
            )
        names = dict(sorted(names.items()))
    else:
        raise DataError(f"{p}: 'names' must be a list or a mapping {{id: name}}, got {type(raw).__name__}.")
    if "nc" in cfg and cfg["nc"] != len(names):
        raise DataError(
            f"{p}: 'nc' is {cfg['nc']!r} but 'names' lists {len(names)} classes. Remove 'nc' (names implies it) "
            "or make 'names' list exactly nc classes."
        )
    return names


def root_candidates(raw: str, yaml_dir: Path) -> list[tuple[str, Path]]:
    """Where a data.yaml's `path` may point, in the order tried: the yaml's folder, then Ultralytics' own order
    (`check_det_dataset`: the working directory, then its datasets dir, `yolo settings datasets_dir`)."""
    if Path(raw).expanduser().is_absolute():
        return [("absolute", abspath_keep_links(raw, yaml_dir))]
    from ultralytics.utils import DATASETS_DIR

    return [("the yaml's folder", abspath_keep_links(raw, yaml_dir)),
            ("the working directory", abspath_keep_links(raw, Path.cwd())),
            ("Ultralytics' datasets_dir", abspath_keep_links(raw, Path(DATASETS_DIR)))]


def _parse_root(cfg: dict[str, Any], p: Path) -> Path:
    raw = cfg.get("path")
    if raw in (None, ""):
        return p.parent
    if not isinstance(raw, str):
        raise DataError(
            f"{p}: 'path' must be a string folder, got {type(raw).__name__}. Fix or remove 'path'."
        )
    tried = root_candidates(raw, p.parent)
    for i, (where, root) in enumerate(tried):
        if root.is_dir():
            if i:  # not where a reader of the yaml would look first
                LOGGER.info("%s: 'path: %s' resolved against %s: %s", p, raw, where, root)
            return root
    raise DataError(
        f"{p}: 'path: {raw}' is not a directory; tried "
        + ", ".join(f"{root} ({where})" for where, root in tried)
        + ". Fix 'path' (an absolute folder, or relative to one of those) or remove it to use the yaml's folder."
    )


def _parse_split(cfg: dict[str, Any], key: str, root: Path, p: Path) -> list[Path]:
    raw = cfg.get(key)
    if raw in (None, "", []):
        raise DataError(
            f"{p} has no '{key}' key. Add '{key}:' naming an image folder, a .txt list of images, or a list of "
            f"those, relative to {root}."
        )
    out = []
    for item in raw if isinstance(raw, list) else [raw]:
        if not isinstance(item, str):
            raise DataError(
                f"{p}: '{key}' entries must be path strings, got {item!r}. Quote or fix that entry."
            )
        src = abspath_keep_links(item, root)
        if not src.exists():
            raise DataError(
                f"{p}: '{key}' entry {item!r} resolves to {src}, which does not exist. Fix '{key}' (relative "
                f"entries resolve against {root}, set by 'path') or create that folder/list."
            )
        out.append(src)
    return out


def publish_dir(tmp: Path, final: Path, marker: str) -> None:
    """Rename a fully written `tmp` dir onto `final`, so readers never see half of it. Losing the race to another
    node on a shared filesystem is fine when its `final` is complete (holds `marker`)."""
    try:
        os.replace(tmp, final)
    except OSError:
        if not (final / marker).is_file():
            raise
