"""`data.tile=N`: every training image larger than N source pixels becomes overlapping N x N windows in the index.

Windows start every round(N x (1 - data.tile_overlap)) pixels along each side, the last one flush with the far
edge, so every pixel is covered and any object no larger than the overlap lies whole inside some window. An image
no larger than a tile on a side keeps that side whole (smaller images stay one sample). A box is clipped to each
window it meets and kept there when at least `data.tile_min_visible` of its area is inside: SAHI's slicing
(`slice_coco`'s `min_area_ratio`, 0.1 by default) applies the same rule, with a lower default. Windows without a
box stay in the index as background samples, as SAHI keeps negative slices by default.

Each window is then an ordinary sample: the loaders crop it from the decoded image (`DatasetIndex.windows`) and
the usual augmentation follows (mosaic of tiles, affine, HSV, flips).
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np

from yolo_ddp.data.dataset import DatasetIndex


def starts(length: int, tile: int, overlap: float) -> list[int]:
    """Window starts along one side of `length` pixels: every round(tile x (1 - overlap)), the last flush."""
    if length <= tile:
        return [0]
    return [*range(0, length - tile, tile - overlap_px(tile, overlap)), length - tile]


def overlap_px(tile: int, overlap: float) -> int:
    """Pixels two neighbouring windows share at least (the last window of a side may share more)."""
    return tile - max(1, round(tile * (1 - overlap)))


def windows(hw: tuple[int, int], tile: int, overlap: float) -> np.ndarray:
    """(k, 4) windows x0, y0, x1, y1 in pixels of an image of size (h, w), row by row."""
    h, w = int(hw[0]), int(hw[1])
    return np.array([(x, y, x + min(tile, w), y + min(tile, h)) for y in starts(h, tile, overlap)
                     for x in starts(w, tile, overlap)], np.int64).reshape(-1, 4)


def clip_rows(rows: np.ndarray, hw: tuple[int, int], window: np.ndarray, min_visible: float,
              ) -> tuple[np.ndarray, int]:
    """Label rows [cls, cx, cy, w, h] normalized to the image → those kept in `window`, normalized to it, and
    how many boxes the window cuts below `min_visible` of their area (dropped)."""
    h, w = int(hw[0]), int(hw[1])
    x0, y0, x1, y1 = (float(v) for v in window)
    cx, cy, bw, bh = rows[:, 1] * w, rows[:, 2] * h, rows[:, 3] * w, rows[:, 4] * h
    box = np.stack([cx - bw / 2, cy - bh / 2, cx + bw / 2, cy + bh / 2], 1)
    cut = np.stack([np.clip(box[:, 0], x0, x1), np.clip(box[:, 1], y0, y1),
                    np.clip(box[:, 2], x0, x1), np.clip(box[:, 3], y0, y1)], 1)
    inside = np.clip(cut[:, 2] - cut[:, 0], 0, None) * np.clip(cut[:, 3] - cut[:, 1], 0, None)
    visible = inside / np.maximum(bw * bh, 1e-12)
    keep = visible >= min_visible
    dropped = int(((visible > 0) & ~keep).sum())
    tw, th = x1 - x0, y1 - y0
    c = cut[keep]
    out = np.stack([rows[keep, 0], ((c[:, 0] + c[:, 2]) / 2 - x0) / tw, ((c[:, 1] + c[:, 3]) / 2 - y0) / th,
                    (c[:, 2] - c[:, 0]) / tw, (c[:, 3] - c[:, 1]) / th], 1)
    return out.astype(np.float32).reshape(-1, 5), dropped


@dataclass(frozen=True)
class TilingReport:
    images: int
    tiled: int  # images cut into more than one window
    samples: int
    boxes_in: int
    boxes_out: int  # box instances over all windows (a box in an overlap counts in each window it is kept in)
    cut_dropped: int  # box parts below tile_min_visible

    def describe(self, tile: int, overlap: float, min_visible: float) -> str:
        return (f"data.tile={tile} (overlap {overlap}, min visible {min_visible}): {self.images} train images -> "
                f"{self.samples} samples ({self.tiled} images tiled, the rest whole); {self.boxes_in} boxes -> "
                f"{self.boxes_out} in windows, {self.cut_dropped} window cuts under tile_min_visible dropped")


def tile_index(index: DatasetIndex, tile: int, overlap: float, min_visible: float,
               ) -> tuple[DatasetIndex, TilingReport]:
    """The index with each image replaced by its windows (`windows` set, `shapes` the windows' (h, w))."""
    files, shapes, wins, rows, dropped, tiled = [], [], [], [], 0, 0
    for i, f in enumerate(index.im_files):
        hw = (int(index.shapes[i][0]), int(index.shapes[i][1]))
        labels = np.asarray(index.labels_for(i), np.float32)
        ws = windows(hw, tile, overlap)
        tiled += len(ws) > 1
        for win in ws:
            kept, cut = clip_rows(labels, hw, win, min_visible)
            files.append(f)
            shapes.append((int(win[3] - win[1]), int(win[2] - win[0])))
            wins.append(win)
            rows.append(kept)
            dropped += cut
    offsets = np.zeros(len(files) + 1, np.int64)
    offsets[1:] = np.cumsum([len(r) for r in rows])
    labels = np.concatenate(rows) if rows else np.zeros((0, 5), np.float32)
    out = replace(index, im_files=files, shapes=np.array(shapes, np.int32).reshape(-1, 2), labels=labels,
                  offsets=offsets, windows=np.array(wins, np.int64).reshape(-1, 4), cache_path=None)
    report = TilingReport(len(index), tiled, len(files), int(len(index.labels)), int(len(labels)), dropped)
    return out, report
