"""COCO instance JSON to YOLO through Ultralytics' own `convert_coco`.

This module checks what `convert_coco` trusts (every annotation's image, category and box) and names each
malformed annotation; it renumbers the categories the annotations use to 1..K in id order (`convert_coco` with
`cls91to80=False` writes `category_id - 1`, so labelling-tool exports with ids from 0 or with gaps need it); and it
finds each `file_name` beside the JSON. Splits: `instances_train*.json` with `instances_val*.json` beside it; a
Roboflow-style export's root (`train/`, `valid/`, `test/`, each with `_annotations.coco.json` and its images; its
category 0 is the project's supercategory, which no annotation uses, so it is not a class) trains on train/ and
validates on valid/; else a seeded `data.val_fraction` split of one JSON.
"""

from __future__ import annotations

import json
import logging
import math
import shutil
from pathlib import Path
from typing import Any

from yolo_ddp.data.foreign.common import (
    ROBOFLOW_JSON,
    Converted,
    coco_jsons,
    flat_name,
    link_image,
    malformed,
    read_json,
    split_by_folder,
)
from yolo_ddp.data.spec import DataError

LOGGER = logging.getLogger(__name__)
_TOL = 0.01
_FIX = "Fix or delete those annotations in the JSON (bbox is [x, y, width, height] in pixels inside the image)."


def inputs(path: Path) -> list[Path]:
    return _jsons(path)


def _jsons(path: Path) -> list[Path]:
    """One JSON to split, or a train JSON and its val JSON."""
    if path.is_file():
        stem = path.stem.lower()
        if stem.startswith("instances_train"):
            vals = sorted(path.parent.glob("instances_val*.json"))
            if len(vals) == 1:
                return [path, vals[0]]
        return [path]
    found = coco_jsons(path)
    if found and all(p.name == ROBOFLOW_JSON for p in found):
        return _roboflow_splits(path, found)
    train = [p for p in found if p.stem.lower().startswith("instances_train")]
    val = [p for p in found if p.stem.lower().startswith("instances_val")]
    if len(train) == 1 and len(val) == 1:
        return [train[0], val[0]]
    if len(found) == 1:
        return found
    raise DataError(
        f"{path} holds COCO files {[p.name for p in found]}; point data.path at one instances_*.json (its "
        "instances_val*.json beside it is used for validation when it is an instances_train*.json)."
    )


def _roboflow_splits(root: Path, found: list[Path]) -> list[Path]:
    """train/ and valid/ (or val/) of a Roboflow-style export; test/ is left for the user's own evaluation."""
    by_split = {p.parent.name.lower(): p for p in found}
    if "train" not in by_split:
        raise DataError(
            f"{root} looks like a Roboflow-style COCO export ({', '.join(str(p.relative_to(root)) for p in found)}) "
            f"but has no train/{ROBOFLOW_JSON}. Export the set with a train split, or point data.path at one "
            "_annotations.coco.json (its images are then split by data.val_fraction)."
        )
    val = by_split.get("valid") or by_split.get("val")
    if val is None:
        LOGGER.warning("%s: no valid/%s; data.val_fraction of train/ validates", root, ROBOFLOW_JSON)
    if "test" in by_split:
        LOGGER.info("%s: test/ is not used for training or validation", root)
    return [by_split["train"], val] if val else [by_split["train"]]


def _part(f: Path) -> str:
    """The split a JSON holds, which names its labels/ and images/ subfolders: train2017 for
    instances_train2017.json, the folder for a Roboflow-style <split>/_annotations.coco.json."""
    return f.parent.name if f.name == ROBOFLOW_JSON else f.stem.replace("instances_", "")


def convert(path: Path, out: Path, val_fraction: float, seed: int) -> Converted:
    from ultralytics.data.converter import convert_coco

    files = _jsons(path)
    checked = [_check(f) for f in files]
    data = [d for d, _ in checked]
    used = sorted({a["category_id"] for d in data for a in d["annotations"]})
    cats = {c["id"]: str(c["name"]) for d in data for c in d["categories"]}
    names = [cats[c] for c in used]
    renumber = {c: i + 1 for i, c in enumerate(used)}  # convert_coco(cls91to80=False) writes category_id - 1
    work = out / ".coco_json"
    links: list[list[Path]] = []
    for f, (d, found) in zip(files, checked, strict=True):
        part = _part(f)
        anns = [{**a, "category_id": renumber[a["category_id"]]} for a in d["annotations"]]
        images = [{**im, "file_name": flat_name(im["file_name"])} for im in d["images"]]  # as link_image names it
        (work / part).mkdir(parents=True)
        # convert_coco names the labels/ subfolder after the JSON's stem without "instances_": here, `part`.
        (work / part / f"instances_{part}.json").write_text(json.dumps({**d, "images": images, "annotations": anns}))
        # convert_coco numbers an existing save_dir (out_2, ...), so it writes into a fresh folder under work/.
        convert_coco(labels_dir=str(work / part), save_dir=str(work / "yolo"), use_segments=False, cls91to80=False)
        (out / "labels").mkdir(exist_ok=True)
        if (work / "yolo" / "labels" / part).is_dir():  # absent when no image of this file has an annotation
            (work / "yolo" / "labels" / part).rename(out / "labels" / part)
        shutil.rmtree(work / "yolo")
        links.append([link_image(found[im["id"]], out, part, im["file_name"]) for im in d["images"]])
    shutil.rmtree(work)
    if len(files) == 2:
        train, val = links
    else:
        train, val = split_by_folder(links[0], out / "images", val_fraction, seed)
    LOGGER.info("converted %s with Ultralytics' convert_coco: %d train / %d val images, classes %s",
                ", ".join(map(str, files)), len(train), len(val), names)
    return Converted(train, val, names)


def _check(f: Path) -> tuple[dict[str, Any], dict[int, Path]]:
    """The JSON and its images found on disk by id, after checking every image and annotation entry."""
    d = read_json(f)
    if not isinstance(d, dict) or not all(isinstance(d.get(k), list) for k in ("images", "annotations", "categories")):
        raise DataError(f"{f} is not a COCO instances file: it needs lists 'images', 'annotations' and 'categories'. "
                        "Export COCO (instances) JSON from the labelling tool.")
    problems: list[str] = []
    cats = {c.get("id") for c in d["categories"] if isinstance(c, dict) and "name" in c}
    images: dict[Any, dict[str, Any]] = {}
    found: dict[Any, Path] = {}
    for k, im in enumerate(d["images"]):
        ok = isinstance(im, dict) and isinstance(im.get("id"), int) and isinstance(im.get("file_name"), str)
        if not ok or not (_num(im.get("width")) > 0 and _num(im.get("height")) > 0):
            problems.append(f"images[{k}]: needs an integer id, a file_name, and width and height > 0")
            continue
        path = _find(f, im["file_name"])
        if path is None:
            problems.append(f"image {im['id']} '{im['file_name']}': no such file beside {f.parent} (tried "
                            f"{', '.join(str(b) for b in _bases(f))})")
            continue
        images[im["id"]], found[im["id"]] = im, path
    for k, a in enumerate(d["annotations"]):
        where = f"annotation {a.get('id', k) if isinstance(a, dict) else k}"
        if not isinstance(a, dict):
            problems.append(f"{where}: not an object")
            continue
        im = images.get(a.get("image_id"))
        if im is None:
            problems.append(f"{where}: image_id {a.get('image_id')!r} is not a listed image")
            continue
        where += f" (image '{im['file_name']}')"
        if a.get("category_id") not in cats:
            problems.append(f"{where}: category_id {a.get('category_id')!r} is not in 'categories'")
        box = a.get("bbox")
        if not (isinstance(box, list) and len(box) == 4 and all(math.isfinite(_num(v)) for v in box)):
            problems.append(f"{where}: bbox {box!r} is not [x, y, width, height]")
        elif not (box[2] > 0 and box[3] > 0):
            problems.append(f"{where}: bbox {box} has no area")
        elif (box[0] < -_TOL * im["width"] or box[1] < -_TOL * im["height"]
              or box[0] + box[2] > (1 + _TOL) * im["width"] or box[1] + box[3] > (1 + _TOL) * im["height"]):
            problems.append(f"{where}: bbox {box} lies outside the {im['width']}x{im['height']} image")
    if problems:
        raise malformed(f, problems, "COCO entr(ies)", _FIX)
    d["images"] = list(images.values())
    d["annotations"] = [a for a in d["annotations"] if not a.get("iscrowd")]  # convert_coco skips crowds too
    return d, found


def _num(v: Any) -> float:
    return float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) else float("nan")


def _bases(f: Path) -> list[Path]:
    """Where a file_name may be relative to: COCO's own layouts (images/<split>/, <split>/) and the JSON's folders."""
    split = _part(f)
    top = f.parent.parent if f.parent.name == "annotations" else f.parent
    return list(dict.fromkeys([top / "images" / split, top / split, top / "images", top, f.parent]))


def _find(f: Path, file_name: str) -> Path | None:
    return next((b / file_name for b in _bases(f) if (b / file_name).is_file()), None)
