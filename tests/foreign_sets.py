"""Small VOC (laid out as PKU-Market-PCB) and COCO sets whose boxes are the red rectangles drawn into each image."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np

from tests.red_boxes import RED

PKU_CLASSES = {"Missing_hole": "missing_hole", "Short": "short"}  # class folder -> <name> in the XML


def draw(path: Path, rng: np.random.Generator, k: int, w: int = 128, h: int = 96) -> list[tuple[int, int, int, int]]:
    """A blue-grey image with k filled red rectangles; their pixel boxes (x0, y0, x1, y1), x1/y1 exclusive."""
    im = np.full((h, w, 3), (160, 110, 90), np.uint8)
    boxes = []
    for _ in range(k):
        bw, bh = (int(v) for v in rng.integers(16, 36, 2))
        x0, y0 = int(rng.integers(0, w - bw)), int(rng.integers(0, h - bh))
        im[y0 : y0 + bh, x0 : x0 + bw] = RED
        boxes.append((x0, y0, x0 + bw, y0 + bh))
    path.parent.mkdir(parents=True, exist_ok=True)
    assert cv2.imwrite(str(path), im, [cv2.IMWRITE_JPEG_QUALITY, 98])
    return boxes


def voc_xml(filename: str, w: int, h: int, objects: list[tuple[str, tuple[float, ...]]]) -> str:
    objs = "".join(
        f"<object><name>{n}</name><pose>Unspecified</pose><truncated>0</truncated><difficult>0</difficult>"
        f"<bndbox><xmin>{b[0]}</xmin><ymin>{b[1]}</ymin><xmax>{b[2]}</xmax><ymax>{b[3]}</ymax></bndbox></object>"
        for n, b in objects
    )
    return (f"<annotation><folder>images</folder><filename>{filename}</filename><size><width>{w}</width>"
            f"<height>{h}</height><depth>3</depth></size><segmented>0</segmented>{objs}</annotation>")


def make_pku(root: Path, per_class: int = 5, seed: int = 0) -> dict[Path, list[tuple[str, tuple[int, ...]]]]:
    """PCB_DATASET/images/<Class>/NN_<class>_MM.jpg + Annotations/<Class>/*.xml; {image: [(name, drawn box)]}."""
    rng = np.random.default_rng(seed)
    drawn = {}
    for i, (folder, name) in enumerate(PKU_CLASSES.items()):
        for j in range(per_class):
            stem = f"{i + 1:02d}_{name}_{j + 1:02d}"
            img = root / "images" / folder / f"{stem}.jpg"
            boxes = draw(img, rng, 1 + j % 2)
            # VOC corners are 1-based and inclusive: pixel columns x0..x1-1 are xmin=x0+1 .. xmax=x1.
            xml = voc_xml(img.name, 128, 96, [(name, (x0 + 1, y0 + 1, x1, y1)) for x0, y0, x1, y1 in boxes])
            (root / "Annotations" / folder).mkdir(parents=True, exist_ok=True)
            (root / "Annotations" / folder / f"{stem}.xml").write_text(xml)
            drawn[img] = [(name, b) for b in boxes]
    return drawn


def make_coco(root: Path, splits: dict[str, int], seed: int = 0) -> dict[Path, list[tuple[str, tuple[int, ...]]]]:
    """root/images/<split>/*.jpg + root/annotations/instances_<split>.json; category ids 3 and 7 (and an unused 9)."""
    rng = np.random.default_rng(seed)
    cats = [{"id": 3, "name": "short"}, {"id": 7, "name": "missing_hole"}, {"id": 9, "name": "unused"}]
    drawn = {}
    ann_id = 1
    for split, n in splits.items():
        images, anns = [], []
        for i in range(n):
            img = root / "images" / split / f"{split}_{i:02d}.jpg"
            boxes = draw(img, rng, 1 + i % 2)
            images.append({"id": i + 1, "file_name": img.name, "width": 128, "height": 96})
            drawn[img] = []
            for k, (x0, y0, x1, y1) in enumerate(boxes):
                cat = cats[(i + k) % 2]
                anns.append({"id": ann_id, "image_id": i + 1, "category_id": cat["id"], "iscrowd": 0,
                             "bbox": [x0, y0, x1 - x0, y1 - y0], "area": (x1 - x0) * (y1 - y0)})
                drawn[img].append((cat["name"], (x0, y0, x1, y1)))
                ann_id += 1
        (root / "annotations").mkdir(parents=True, exist_ok=True)
        (root / "annotations" / f"instances_{split}.json").write_text(
            json.dumps({"images": images, "annotations": anns, "categories": cats}))
    return drawn


def make_roboflow(root: Path, splits: dict[str, int], seed: int = 0) -> dict[Path, list[tuple[str, tuple[int, ...]]]]:
    """A Roboflow-style COCO export: root/<split>/<name>_jpg.rf.<hash>.jpg beside root/<split>/_annotations.coco.json.
    Category 0 is the project's supercategory (no annotation uses it); the classes are 1 and 2."""
    rng = np.random.default_rng(seed)
    cats = [{"id": 0, "name": "pcb-defects", "supercategory": "none"},
            {"id": 1, "name": "short", "supercategory": "pcb-defects"},
            {"id": 2, "name": "missing_hole", "supercategory": "pcb-defects"}]
    drawn = {}
    for split, n in splits.items():
        images, anns = [], []
        for i in range(n):
            img = root / split / f"{split}{i:02d}_jpg.rf.{i:08x}{seed:024x}.jpg"
            boxes = draw(img, rng, 1 + i % 2)
            images.append({"id": i, "license": 1, "file_name": img.name, "height": 96, "width": 128,
                           "date_captured": "2026-12-04T00:00:00+00:00"})
            drawn[img] = []
            for x0, y0, x1, y1 in boxes:
                cat = cats[1 + (i + len(anns)) % 2]
                anns.append({"id": len(anns), "image_id": i, "category_id": cat["id"], "iscrowd": 0, "segmentation": [],
                             "bbox": [x0, y0, x1 - x0, y1 - y0], "area": (x1 - x0) * (y1 - y0)})
                drawn[img].append((cat["name"], (x0, y0, x1, y1)))
        (root / split / "_annotations.coco.json").write_text(json.dumps(
            {"info": {"description": "Exported from roboflow.com"}, "licenses": [{"id": 1, "name": "CC BY 4.0"}],
             "categories": cats, "images": images, "annotations": anns}))
    return drawn
