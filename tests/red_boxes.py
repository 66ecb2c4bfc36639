"""A tiny data set whose labels are exactly the red rectangles drawn into each image.

A box that still holds red pixels after augmentation is on its object; used by both backends' tests.
"""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

from yolo_ddp.data.dataset import DatasetIndex, build_index

RED = (0, 0, 255)  # BGR, as cv2 writes


def make_index(tmp_path: Path, n: int = 12, fmt: str = "png") -> DatasetIndex:
    """n images of varied aspect ratios on blue-grey, each with 1-3 filled red rectangles as its labels."""
    rng = np.random.default_rng(0)
    d, ld = tmp_path / "ds/images/train", tmp_path / "ds/labels/train"
    d.mkdir(parents=True)
    ld.mkdir(parents=True)
    sizes = [(120, 160), (160, 120), (90, 200), (128, 128)]
    for i in range(n):
        h, w = sizes[i % len(sizes)]
        im = np.full((h, w, 3), (160, 110, 90), np.uint8)
        rows = []
        for k in range(1 + i % 3):
            bw, bh = (int(v) for v in rng.integers(14, 40, 2))
            x0, y0 = int(rng.integers(0, w - bw)), int(rng.integers(0, h - bh))
            im[y0 : y0 + bh, x0 : x0 + bw] = RED
            rows.append(f"{k} {(x0 + bw / 2) / w} {(y0 + bh / 2) / h} {bw / w} {bh / h}")
        cv2.imwrite(str(d / f"{i:02d}.{fmt}"), im)
        (ld / f"{i:02d}.txt").write_text("\n".join(rows))
    return build_index([d], nc=3, cache_dir=tmp_path / "cache", split="train")


def xyxy_px(batch: dict, i: int, s: int) -> np.ndarray:
    b = batch["bboxes"][batch["batch_idx"] == i].numpy() * s
    return np.stack([b[:, 0] - b[:, 2] / 2, b[:, 1] - b[:, 3] / 2, b[:, 0] + b[:, 2] / 2, b[:, 1] + b[:, 3] / 2], 1)
