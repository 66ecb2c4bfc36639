"""Pascal VOC XML (a `<filename>`, `<size>`, and `<object>`s with `<name>` and a pixel `<bndbox>` per image) to YOLO.

The layout of PKU-Market-PCB (`images/<Class>/*.jpg`, `Annotations/<Class>/*.xml`) and of VOC itself
(`JPEGImages/`, `Annotations/`, `ImageSets/Main/{train,val}.txt`). Boxes convert as Ultralytics' VOC.yaml does
(1-based pixel corners, `difficult` objects left out); class names are the `<name>`s as written, sorted.
"""

from __future__ import annotations

import logging
import math
import os
import xml.etree.ElementTree as ET
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

from PIL import Image
from ultralytics.data.utils import IMG_FORMATS

from yolo_ddp.data.foreign.common import Converted, link_image, malformed, split_by_folder
from yolo_ddp.data.spec import DataError

LOGGER = logging.getLogger(__name__)
_TOL = 0.01  # box corners may lie up to 1% of the image outside it, as the label index accepts; clipped there
_FIX = ("Fix those objects in the XML (name, and xmin < xmax, ymin < ymax inside the image's size in pixels), or "
        "delete them.")


@dataclass(frozen=True)
class _Image:
    path: Path
    xml: Path
    rows: list[tuple[str, float, float, float, float]]  # name, normalized cx, cy, w, h


def inputs(root: Path) -> list[Path]:
    """The files a conversion reads: XMLs, split lists and the images they may name."""
    split_lists = [p for p in (root / "ImageSets" / "Main").glob("*.txt")] if (root / "ImageSets").is_dir() else []
    return sorted((root / "Annotations").rglob("*.xml")) + split_lists + _images(root)


def _images(root: Path) -> list[Path]:
    out = []
    for d, dirs, names in os.walk(root, followlinks=True):
        dirs[:] = [x for x in dirs if not (Path(d) == root and x in ("Annotations", "ImageSets"))]
        out += [Path(d) / n for n in names if n.rpartition(".")[-1].lower() in IMG_FORMATS]
    return sorted(out)


def convert(root: Path, out: Path, val_fraction: float, seed: int) -> Converted:
    images = _images(root)
    by_name: dict[str, list[Path]] = defaultdict(list)
    for p in images:
        by_name[p.name.lower()].append(p)
        by_name[p.stem.lower()].append(p)
    problems: list[str] = []
    parsed = [im for xml in sorted((root / "Annotations").rglob("*.xml"))
              if (im := _parse(xml, root / "Annotations", by_name, problems)) is not None]
    first: dict[Path, Path] = {}
    for im in parsed:
        if (other := first.setdefault(im.path, im.xml)) != im.xml:
            problems.append(f"{im.xml}: describes {im.path}, as {other} does (keep one XML per image)")
    if problems:
        raise malformed(root / "Annotations", problems, "VOC annotation(s)", _FIX)
    if not parsed:
        raise DataError(f"{root / 'Annotations'} holds no usable XML annotation. Point data.path at a VOC set.")
    names = sorted({row[0] for im in parsed for row in im.rows})
    (out / "labels" / "voc").mkdir(parents=True)
    link = {}
    for im in parsed:
        link[im.path] = link_image(im.path, out, "voc", im.path.relative_to(root))
        rows = (f"{names.index(n)} {cx:.6f} {cy:.6f} {w:.6f} {h:.6f}\n" for n, cx, cy, w, h in im.rows)
        (out / "labels" / "voc" / link[im.path].name).with_suffix(".txt").write_text("".join(rows))
    train, val = _split(root, [im.path for im in parsed], val_fraction, seed)
    LOGGER.info("converted %d VOC annotation(s) from %s: %d train / %d val images, classes %s", len(parsed), root,
                len(train), len(val), names)
    return Converted([link[p] for p in train], [link[p] for p in val], names)


def _split(root: Path, images: list[Path], val_fraction: float, seed: int) -> tuple[list[Path], list[Path]]:
    """VOC's own ImageSets/Main/{train,val}.txt where present, else a seeded split per folder."""
    lists = root / "ImageSets" / "Main"
    if (lists / "train.txt").is_file() and (lists / "val.txt").is_file():
        def ids(split: str) -> set[str]:
            return {line.split()[0] for line in (lists / f"{split}.txt").read_text().splitlines() if line.strip()}

        train_ids, val_ids = ids("train"), ids("val")
        return [p for p in images if p.stem in train_ids], [p for p in images if p.stem in val_ids]
    return split_by_folder(images, root, val_fraction, seed)


def _parse(xml: Path, folder: Path, by_name: dict[str, list[Path]], problems: list[str]) -> _Image | None:
    """The image and rows of one XML; its problems, named by the XML's path under `folder`, go to `problems`."""
    name_of = xml.relative_to(folder).as_posix()
    try:
        ann = ET.parse(xml).getroot()
    except ET.ParseError as e:
        problems.append(f"{name_of}: not valid XML ({e})")
        return None
    filename = (ann.findtext("filename") or "").strip()
    image = _find_image(xml, filename, by_name)
    if image is None:
        problems.append(f"{name_of}: no image named {filename or xml.stem!r} beside the annotations")
        return None
    w, h = _size(ann, image)
    if not (w > 0 and h > 0):
        problems.append(f"{name_of}: <size> has no positive width and height, and {image} cannot be read")
        return None
    rows = []
    difficult = 0
    for k, obj in enumerate(ann.iter("object"), 1):
        name = (obj.findtext("name") or "").strip()
        where = f"{name_of} object {k}" + (f" '{name}'" if name else "")
        if (obj.findtext("difficult") or "0").strip() == "1":
            difficult += 1
            continue
        try:
            x1, x2, y1, y2 = (float(obj.find("bndbox").findtext(t)) for t in ("xmin", "xmax", "ymin", "ymax"))
        except (AttributeError, TypeError, ValueError):
            problems.append(f"{where}: <bndbox> needs numbers xmin, ymin, xmax, ymax")
            continue
        if not name:
            problems.append(f"{where}: no <name>")
        elif not all(math.isfinite(v) for v in (x1, x2, y1, y2)) or x2 <= x1 or y2 <= y1:
            problems.append(f"{where}: box ({x1:g}, {y1:g}, {x2:g}, {y2:g}) is empty; need xmin < xmax, ymin < ymax")
        elif x1 < -_TOL * w or y1 < -_TOL * h or x2 > (1 + _TOL) * w + 1 or y2 > (1 + _TOL) * h + 1:
            problems.append(f"{where}: box ({x1:g}, {y1:g}, {x2:g}, {y2:g}) lies outside the {w}x{h} image")
        else:  # Ultralytics' VOC.yaml convert_box: 1-based pixel corners
            rows.append((name, ((x1 + x2) / 2 - 1) / w, ((y1 + y2) / 2 - 1) / h, (x2 - x1) / w, (y2 - y1) / h))
    if difficult:
        LOGGER.info("%s: left out %d difficult object(s), as Ultralytics' VOC conversion does", xml, difficult)
    return _Image(image, xml, rows)


def _find_image(xml: Path, filename: str, by_name: dict[str, list[Path]]) -> Path | None:
    """The image an XML describes: by its <filename> (else the XML's own stem), preferring the same class folder."""
    for key in (Path(filename).name.lower(), xml.stem.lower()):
        found = by_name.get(key, [])
        if len(found) > 1:
            found = [p for p in found if p.parent.name.lower() == xml.parent.name.lower()] or found[:0]
        if len(found) == 1:
            return found[0]
    return None


def _size(ann: ET.Element, image: Path) -> tuple[int, int]:
    try:
        w, h = int(float(ann.findtext("size/width") or 0)), int(float(ann.findtext("size/height") or 0))
    except ValueError:
        w = h = 0
    if w > 0 and h > 0:
        return w, h
    try:  # labelling tools sometimes write 0 x 0
        with Image.open(image) as im:
            return im.size
    except OSError:
        return 0, 0
