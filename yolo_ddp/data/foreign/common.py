"""What the VOC and COCO converters share: the converted set's shape, image links, the split, error paragraphs."""

from __future__ import annotations

import json
import os
import random
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

from yolo_ddp.data.spec import DataError

_MAX_LISTED = 8  # malformed annotations named in one error paragraph


@dataclass(frozen=True)
class Converted:
    """What a converter leaves in its output folder: image links (absolute) per split, and the class names."""

    train: list[Path]
    val: list[Path]
    names: list[str]


ROBOFLOW_JSON = "_annotations.coco.json"  # Roboflow-style exports: <split>/_annotations.coco.json, images beside it


def coco_jsons(path: Path) -> list[Path]:
    """The COCO instance files a folder holds: in annotations/ or itself, else one per split folder of a
    Roboflow-style export (train/, valid/, test/)."""
    for d in (path / "annotations", path):
        if found := sorted(d.glob("instances_*.json")):
            return found
    return sorted(path.glob(f"*/{ROBOFLOW_JSON}"))


def flat_name(rel: str | Path) -> str:
    """One file name for a source path: no folder in it can be an `images` that `img2label_paths` would map."""
    return Path(rel).as_posix().replace("/", "__")


def link_image(src: Path, out: Path, part: str, rel: str | Path) -> Path:
    """`out/images/<part>/<flat rel>` pointing at the source image (never copied); its label is the same name
    under `out/labels/<part>/` with .txt."""
    link = out / "images" / part / flat_name(rel)
    link.parent.mkdir(parents=True, exist_ok=True)
    link.symlink_to(os.path.abspath(src))
    return link


def split_by_folder(items: list[Path], root: Path, val_fraction: float, seed: int) -> tuple[list[Path], list[Path]]:
    """A seeded split that keeps `val_fraction` of every source folder (a PKU class folder) for validation.

    Each folder is shuffled by its own seed (`seed`, folder), so adding a folder leaves the others' splits alone.
    """
    groups: dict[str, list[Path]] = defaultdict(list)
    for p in items:
        groups[p.parent.relative_to(root).as_posix()].append(p)
    train: list[Path] = []
    val: list[Path] = []
    for group in sorted(groups):
        members = sorted(groups[group])
        random.Random(f"{seed}/{group}").shuffle(members)
        n_val = min(max(round(len(members) * val_fraction), 1), len(members) - 1) if len(members) > 1 else 0
        val += members[:n_val]
        train += members[n_val:]
    if not train or not val:
        raise DataError(
            f"{root}: {len(items)} annotated image(s) cannot split into train and val with data.val_fraction="
            f"{val_fraction}. Add images, or give the set its own split (VOC: ImageSets/Main/train.txt and val.txt; "
            "COCO: instances_train*.json and instances_val*.json)."
        )
    return sorted(train), sorted(val)


def malformed(source: Path, problems: list[str], what: str, fix: str) -> DataError:
    """One paragraph naming every malformed annotation (the first few, and how many)."""
    more = f"; and {len(problems) - _MAX_LISTED} more" if len(problems) > _MAX_LISTED else ""
    return DataError(
        f"{source}: {len(problems)} malformed {what}: {'; '.join(problems[:_MAX_LISTED])}{more}. {fix} "
        "Nothing was converted."
    )


def read_json(path: Path) -> object:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise DataError(f"{path} is not valid JSON ({' '.join(str(e).split())}). Fix the file at that position, "
                        "or export it again from the labelling tool.") from e
