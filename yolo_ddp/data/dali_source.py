"""What the DALI pipelines are fed: per-sample encoded bytes, augmentation parameters and exact boxes.

DALI does the pixel work (decode, resize, pad/crop, mosaic, flip, HSV) on the pipeline's device; every random
choice and all box arithmetic happen here, in numpy, so boxes stay exact and a sample's augmentation depends only
on (seed, epoch, rank, position) — not on thread or worker scheduling. Labels come from the node-shared
`DatasetIndex` (parsed once at indexing time); nothing re-reads a label file.

Sources are module-level callables holding only picklable state, so DALI's parallel external source can ship
them to spawned worker processes under torchrun.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from nvidia.dali import types
from nvidia.dali.types import SampleInfo

from yolo_ddp.data.dataset import DatasetIndex

PAD_VALUE = 114  # letterbox grey, as Ultralytics
MIN_BOX_PX = 2.0  # Ultralytics' box_candidates: drop boxes thinner than 2 px ...
MIN_AREA_RATIO = 0.1  # ... or with less than 10% of their area left after cropping


@dataclass(frozen=True)
class Augment:
    """Random augmentation strengths (Ultralytics' names and meanings); all zero → deterministic letterbox."""

    hsv_h: float = 0.015
    hsv_s: float = 0.7
    hsv_v: float = 0.4
    fliplr: float = 0.5
    mosaic: float = 1.0  # probability of a 4-image mosaic per sample
    scale: float = 0.5  # mosaic tiles are resized by a factor in [1 - scale, 1 + scale]

    @property
    def hsv(self) -> bool:
        return bool(self.hsv_h or self.hsv_s or self.hsv_v)


NO_AUGMENT = Augment(0.0, 0.0, 0.0, 0.0, 0.0, 0.0)


def letterbox_geometry(hw: tuple[int, int], imgsz: int) -> tuple[float, tuple[int, int], tuple[int, int]]:
    """Ultralytics' `LetterBox(auto=False, center=True)`: scale r, resized (h, w) and (top, left) padding."""
    h, w = int(hw[0]), int(hw[1])
    r = min(imgsz / h, imgsz / w)
    nw, nh = max(round(w * r), 1), max(round(h * r), 1)
    top, left = round((imgsz - nh) / 2 - 0.1), round((imgsz - nw) / 2 - 0.1)
    return r, (nh, nw), (top, left)


def _to_pixels_xyxy(rows: np.ndarray, hw: tuple[int, int], r: float) -> np.ndarray:
    """Normalized xywh of the original image → xyxy pixels in the image resized by r."""
    h, w = hw
    cx, cy, bw, bh = (rows[:, k] for k in range(1, 5))
    xyxy = np.stack([cx - bw / 2, cy - bh / 2, cx + bw / 2, cy + bh / 2], 1)
    return xyxy * np.array([w * r, h * r, w * r, h * r], np.float32)


def _rows(cls: np.ndarray, xyxy: np.ndarray, imgsz: int) -> np.ndarray:
    """(k + 1, 5) float32 rows [cls, cx, cy, w, h] normalized to the canvas, plus one -1 sentinel row.

    The sentinel keeps every sample non-empty: DALI pads a batch to its longest sample and an all-empty
    batch would come out with shape (B, 0, 0); the torch side drops rows whose class is < 0.
    """
    xywh = np.stack([(xyxy[:, 0] + xyxy[:, 2]) / 2, (xyxy[:, 1] + xyxy[:, 3]) / 2,
                     xyxy[:, 2] - xyxy[:, 0], xyxy[:, 3] - xyxy[:, 1]], 1) / imgsz
    out = np.full((len(cls) + 1, 5), -1.0, np.float32)
    out[:-1, 0], out[:-1, 1:] = cls, xywh
    return out


def _keep_after_crop(before: np.ndarray, after: np.ndarray) -> np.ndarray:
    w, h = after[:, 2] - after[:, 0], after[:, 3] - after[:, 1]
    area0 = (before[:, 2] - before[:, 0]) * (before[:, 3] - before[:, 1])
    return (w > MIN_BOX_PX) & (h > MIN_BOX_PX) & (w * h > MIN_AREA_RATIO * np.maximum(area0, 1e-9))


@dataclass(frozen=True)
class Tile:
    """One image placed on the canvas: DALI resizes it to `size`, then slices `shape` pixels from `start`
    (negative or past-the-end parts are padded with grey); the slice lands at `origin` on the canvas."""

    index: int
    size: tuple[int, int]  # resized (h, w)
    start: tuple[int, int]  # (y, x) in the resized image
    shape: tuple[int, int]  # (h, w) of the slice
    origin: tuple[int, int]  # (y, x) on the canvas


def letterbox_tile(index: DatasetIndex, i: int, imgsz: int) -> tuple[Tile, float, tuple[int, int]]:
    hw = tuple(int(v) for v in index.shapes[i])
    r, size, (top, left) = letterbox_geometry(hw, imgsz)
    return Tile(i, size, (-top, -left), (imgsz, imgsz), (0, 0)), r, (top, left)


def mosaic_tiles(index: DatasetIndex, ids: list[int], imgsz: int, rng: np.random.Generator, scale: float,
                 ) -> tuple[list[Tile], list[float]]:
    """Four images meeting at a random centre; each fills its quadrant from the corner that touches the centre.

    Quadrants in reading order (top-left, top-right, bottom-left, bottom-right), so the canvas is
    cat(cat(t0, t1, x), cat(t2, t3, x), y) on the DALI side.
    """
    s = imgsz
    yc, xc = (int(v) for v in rng.integers(s // 4, s - s // 4 + 1, size=2))
    tiles, ratios = [], []
    for q, i in enumerate(ids):
        h, w = (int(v) for v in index.shapes[i])
        r = s / max(h, w) * float(rng.uniform(1 - scale, 1 + scale))
        nh, nw = max(round(h * r), 1), max(round(w * r), 1)
        bottom, right = q >= 2, q % 2 == 1
        qh, qw = (s - yc if bottom else yc), (s - xc if right else xc)
        start = (0 if bottom else nh - yc, 0 if right else nw - xc)  # the corner of the image at the centre
        tiles.append(Tile(i, (nh, nw), start, (qh, qw), (yc if bottom else 0, xc if right else 0)))
        ratios.append(r)
    return tiles, ratios


def quarter(tile: Tile, imgsz: int) -> list[Tile]:
    """A letterboxed image cut into the four canvas quadrants, for a plain sample in the mosaic graph."""
    c = imgsz // 2
    out = []
    for q in range(4):
        oy, ox = (c if q >= 2 else 0), (c if q % 2 else 0)
        shape = (imgsz - c if q >= 2 else c, imgsz - c if q % 2 else c)
        out.append(Tile(tile.index, tile.size, (tile.start[0] + oy, tile.start[1] + ox), shape, (oy, ox)))
    return out


def tile_boxes(index: DatasetIndex, tile: Tile, r: float) -> tuple[np.ndarray, np.ndarray]:
    """Classes and canvas xyxy pixels of the tile's boxes, clipped to the tile and filtered like Ultralytics."""
    rows = np.asarray(index.labels_for(tile.index), np.float32)
    hw = tuple(int(v) for v in index.shapes[tile.index])
    xyxy = _to_pixels_xyxy(rows, hw, r)
    shift = np.array([tile.origin[1] - tile.start[1], tile.origin[0] - tile.start[0]] * 2, np.float32)
    before = xyxy + shift
    lo = np.array([tile.origin[1], tile.origin[0]] * 2, np.float32)
    hi = lo + np.array([tile.shape[1], tile.shape[0]] * 2, np.float32)
    after = np.clip(before, lo, hi)
    keep = _keep_after_crop(before, after)
    return rows[keep, 0], after[keep]


TILE_OUTPUTS = 5  # per tile: encoded bytes, resize size, slice start, slice shape, interpolation


def _tile_arrays(index: DatasetIndex, t: Tile) -> tuple[np.ndarray, ...]:
    # Nearest-neighbour where the size does not change: identical pixels, and DALI's CPU bilinear resize
    # costs ~5 thread-ms per 640 px image even at scale 1 (bench/dali_cpu_ops.py).
    same = tuple(int(v) for v in index.shapes[t.index]) == t.size
    interp = int(types.INTERP_NN if same else types.INTERP_LINEAR)
    return (_read(index.im_files[t.index]), np.array(t.size, np.float32), np.array(t.start, np.int32),
            np.array(t.shape, np.int32), np.array(interp, np.int32))


def _read(path: str) -> np.ndarray:
    return np.fromfile(path, dtype=np.uint8)


class TrainSource:
    """Endless per-sample stream: epoch e (from `start_epoch`) is a permutation seeded by (seed, e), agreed
    by every rank, cut into `world` equal shards (remainder dropped, as DistributedSampler(drop_last=True));
    rank takes its shard's first `per_epoch` samples. Outputs: per tile (bytes, size, start, shape, interp), then
    labels, flip, hue, saturation, value, index."""

    def __init__(self, index: DatasetIndex, imgsz: int, per_epoch: int, rank: int, world: int, seed: int,
                 augment: Augment, tiles: int, start_epoch: int = 0, skip: int = 0) -> None:
        shard = len(index) // world
        if not 0 < per_epoch <= shard:
            raise ValueError(f"{per_epoch} samples per epoch per rank, but this rank's shard holds {shard}: lower "
                             "the batch size or add images.")
        self.index, self.imgsz, self.per_epoch, self.rank, self.world = index, imgsz, per_epoch, rank, world
        self.seed, self.augment, self.tiles, self.start_epoch = seed, augment, tiles, start_epoch
        self.skip = skip  # samples of `start_epoch` already trained (mid-epoch resume)
        self._shards: dict[int, np.ndarray] = {}  # the current epoch's shard (samples arrive in order)

    def shard(self, epoch: int) -> np.ndarray:
        if epoch not in self._shards:
            perm = np.random.default_rng((self.seed, epoch)).permutation(len(self.index))
            self._shards = {epoch: perm[: len(self.index) // self.world * self.world][self.rank :: self.world]}
        return self._shards[epoch]

    def epoch_of(self, sample_idx: int) -> tuple[int, int]:
        g = sample_idx + self.skip
        return self.start_epoch + g // self.per_epoch, g % self.per_epoch

    def sample(self, sample_idx: int) -> tuple[list[Tile], np.ndarray, bool, tuple[float, float, float], int]:
        """Tiles, label rows, flip, (hue degrees, saturation gain, value gain) and the main image's index."""
        epoch, pos = self.epoch_of(sample_idx)
        i = int(self.shard(epoch)[pos])
        rng = np.random.default_rng((self.seed, epoch, self.rank, pos, 1))
        a, s = self.augment, self.imgsz
        if self.tiles == 4 and rng.random() < a.mosaic:
            others = [int(j) for j in rng.integers(0, len(self.index), size=3)]
            tiles, ratios = mosaic_tiles(self.index, [i, *others], s, rng, a.scale)
            parts = [tile_boxes(self.index, t, r) for t, r in zip(tiles, ratios, strict=True)]
        else:
            tile, r, _ = letterbox_tile(self.index, i, s)
            parts = [tile_boxes(self.index, tile, r)]
            tiles = [tile] if self.tiles == 1 else quarter(tile, s)
        cls = np.concatenate([c for c, _ in parts])
        xyxy = np.concatenate([b for _, b in parts]).reshape(-1, 4)
        flip = bool(rng.random() < a.fliplr)
        if flip:
            xyxy = np.stack([s - xyxy[:, 2], xyxy[:, 1], s - xyxy[:, 0], xyxy[:, 3]], 1)
        gains = rng.uniform(-1, 1, 3) * np.array([a.hsv_h, a.hsv_s, a.hsv_v])
        # Ultralytics shifts OpenCV hue (0..180 for 360 degrees) by gain * 180, i.e. gain * 360 degrees.
        hsv = (float(gains[0] * 360), float(1 + gains[1]), float(1 + gains[2]))
        return tiles, _rows(cls, xyxy, s), flip, hsv, i

    def __call__(self, info: SampleInfo) -> tuple[np.ndarray, ...]:
        tiles, rows, flip, hsv, i = self.sample(info.idx_in_epoch)
        out: list[np.ndarray] = []
        for t in tiles:
            out += _tile_arrays(self.index, t)
        return (*out, rows, np.array(flip, np.int32), *(np.array(v, np.float32) for v in hsv),
                np.array([i], np.int64))


class ValSource:
    """Letterbox only; rank takes images rank::world, padded with repeats of its last image to whole batches
    (the `valid` output is 0 on those, and the torch side drops them), so every image counts exactly once."""

    def __init__(self, index: DatasetIndex, imgsz: int, batch: int, rank: int, world: int) -> None:
        self.index, self.imgsz = index, imgsz
        own = list(range(rank, len(index), world))
        self.n_valid = len(own)
        pad = -len(own) % batch if own else 0
        self.ids = own + own[-1:] * pad

    def __call__(self, info: SampleInfo) -> tuple[np.ndarray, ...]:
        if info.idx_in_epoch >= len(self.ids):
            raise StopIteration
        i = self.ids[info.idx_in_epoch]
        tile, r, _ = letterbox_tile(self.index, i, self.imgsz)
        cls, xyxy = tile_boxes(self.index, tile, r)
        return (*_tile_arrays(self.index, tile), _rows(cls, xyxy, self.imgsz),
                np.array([i], np.int64), np.array(info.idx_in_epoch < self.n_valid, np.int32))
