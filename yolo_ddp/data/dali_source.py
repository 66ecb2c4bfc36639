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
from ultralytics.data.augment import LetterBox, RandomPerspective

from yolo_ddp.data.dataset import DatasetIndex
from yolo_ddp.data.image_cache import ImageStore, load_image_size
from yolo_ddp.data.torch_loader import val_batches
from yolo_ddp.plan import loader_batches_per_epoch, shard_size

PAD_VALUE = 114  # letterbox grey, as Ultralytics


@dataclass(frozen=True)
class Augment:
    """Random augmentation strengths (Ultralytics' names and meanings); all zero → deterministic letterbox."""

    hsv_h: float = 0.015
    hsv_s: float = 0.7
    hsv_v: float = 0.4
    fliplr: float = 0.5
    mosaic: float = 1.0  # probability of a 4-image mosaic per sample
    scale: float = 0.5  # every mosaic tile or plain sample is resized by a factor in [1 - scale, 1 + scale]
    translate: float = 0.1  # a plain sample's centre moves by up to +-translate * imgsz on each axis

    @property
    def hsv(self) -> bool:
        return bool(self.hsv_h or self.hsv_s or self.hsv_v)


NO_AUGMENT = Augment(0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0)


def letterbox_geometry(hw: tuple[int, int], imgsz: int) -> tuple[float, tuple[int, int], tuple[int, int]]:
    """Ultralytics' `LetterBox(auto=False, center=True)`: scale r, resized (h, w) and (top, left) padding."""
    h, w = int(hw[0]), int(hw[1])
    r = min(imgsz / h, imgsz / w)
    nw, nh = max(round(w * r), 1), max(round(h * r), 1)
    top, left = round((imgsz - nh) / 2 - 0.1), round((imgsz - nw) / 2 - 0.1)
    return r, (nh, nw), (top, left)


def _to_pixels_xyxy(rows: np.ndarray, gain_wh: tuple[float, float]) -> np.ndarray:
    """Normalized xywh of the original image → xyxy pixels in the resized image (gain_wh: its (w, h) extent)."""
    gw, gh = gain_wh
    cx, cy, bw, bh = (rows[:, k] for k in range(1, 5))
    xyxy = np.stack([cx - bw / 2, cy - bh / 2, cx + bw / 2, cy + bh / 2], 1)
    return xyxy * np.array([gw, gh, gw, gh], np.float32)


def _gain(index: DatasetIndex, i: int, r: float) -> tuple[float, float]:
    h, w = (int(v) for v in index.shapes[i])
    return w * r, h * r


def _rows(cls: np.ndarray, xyxy: np.ndarray, hw: tuple[int, int]) -> np.ndarray:
    """(k + 1, 5) float32 rows [cls, cx, cy, w, h] normalized to the (h, w) canvas, plus one -1 sentinel row.

    The sentinel keeps every sample non-empty: DALI pads a batch to its longest sample and an all-empty
    batch would come out with shape (B, 0, 0); the torch side drops rows whose class is < 0.
    """
    xywh = np.stack([(xyxy[:, 0] + xyxy[:, 2]) / 2, (xyxy[:, 1] + xyxy[:, 3]) / 2,
                     xyxy[:, 2] - xyxy[:, 0], xyxy[:, 3] - xyxy[:, 1]], 1) / np.array(hw[::-1] * 2, np.float32)
    out = np.full((len(cls) + 1, 5), -1.0, np.float32)
    out[:-1, 0], out[:-1, 1:] = cls, xywh
    return out


def _keep_after_crop(before: np.ndarray, after: np.ndarray) -> np.ndarray:
    """Ultralytics' RandomPerspective filter (its own box_candidates: > 2 px each side, aspect < 100, > 10% of
    the area) of the clipped boxes against the unclipped ones, which already carry the scale factor."""
    return RandomPerspective.box_candidates(box1=before.T, box2=after.T)


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


def affine_tile(index: DatasetIndex, i: int, imgsz: int, rng: np.random.Generator, scale: float,
                translate: float) -> tuple[Tile, float]:
    """Ultralytics' RandomPerspective (no rotation, shear or perspective) on a sample without mosaic.

    The image, long side imgsz, is resized by s ~ U(1 - scale, 1 + scale) about its centre, which lands at
    U(0.5 - translate, 0.5 + translate) * imgsz on each axis; the rest of the canvas is grey. Placement rounds
    as LetterBox does, so translate = scale = 0 gives the centred letterbox exactly. Returns the tile and its
    total resize factor.
    """
    h, w = (int(v) for v in index.shapes[i])
    r = imgsz / max(h, w) * float(rng.uniform(1 - scale, 1 + scale))
    nh, nw = max(round(h * r), 1), max(round(w * r), 1)
    cx, cy = (float(v) * imgsz for v in rng.uniform(0.5 - translate, 0.5 + translate, 2))
    top, left = round(cy - nh / 2 - 0.1), round(cx - nw / 2 - 0.1)
    return Tile(i, (nh, nw), (-top, -left), (imgsz, imgsz), (0, 0)), r


def val_tile(index: DatasetIndex, i: int, imgsz: int, shape: tuple[int, int] | None,
             ) -> tuple[Tile, tuple[float, float], tuple, tuple[int, int]]:
    """A validation image: tile, box gain (w, h), ratio_pad and resized_shape, as the torch backend's.

    shape None: the square letterbox. Else Ultralytics' rect validation: `load_image` (long side imgsz), then
    `LetterBox(scaleup=False)` into the batch `shape`, using LetterBox's own arithmetic. DALI resizes once,
    from the original straight to the final size: the load_image size, as batch shapes padded by 0.5 stride
    never make the letterbox shrink.
    """
    hw0 = tuple(int(v) for v in index.shapes[i])
    if shape is None:
        tile, r, (top, left) = letterbox_tile(index, i, imgsz)
        return tile, _gain(index, i, r), ((r, r), (left, top)), (imgsz, imgsz)
    h1, w1 = load_image_size(hw0, imgsz)
    p = LetterBox(new_shape=imgsz, scaleup=False).get_params({"img": np.empty((h1, w1, 0), np.uint8),
                                                              "rect_shape": shape})
    r = p["ratio"][0]
    (nw, nh), top, left = p["new_unpad"], p["top"], p["left"]
    tile = Tile(i, (nh, nw), (-top, -left), (int(shape[0]), int(shape[1])), (0, 0))
    return tile, (w1 * r, h1 * r), ((h1 / hw0[0] * r, w1 / hw0[1] * r), (left, top)), tile.shape


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


def tile_boxes(index: DatasetIndex, tile: Tile, gain_wh: tuple[float, float], drop: bool = True,
               ) -> tuple[np.ndarray, np.ndarray]:
    """Classes and canvas xyxy pixels of the tile's boxes, clipped to the tile and, with `drop` (training),
    filtered like Ultralytics. Validation never drops ground truth: Ultralytics scores every label."""
    rows = np.asarray(index.labels_for(tile.index), np.float32)
    xyxy = _to_pixels_xyxy(rows, gain_wh)
    shift = np.array([tile.origin[1] - tile.start[1], tile.origin[0] - tile.start[0]] * 2, np.float32)
    before = xyxy + shift
    lo = np.array([tile.origin[1], tile.origin[0]] * 2, np.float32)
    hi = lo + np.array([tile.shape[1], tile.shape[0]] * 2, np.float32)
    after = np.clip(before, lo, hi)
    if not drop:
        return rows[:, 0], after
    keep = _keep_after_crop(before, after)
    return rows[keep, 0], after[keep]


TILE_OUTPUTS = 5  # per tile: encoded bytes (or stored pixels), resize size, slice start, slice shape, interpolation


def _tile_arrays(index: DatasetIndex, t: Tile, store: ImageStore | None = None) -> tuple[np.ndarray, ...]:
    # Nearest-neighbour where the size does not change: identical pixels, and DALI's CPU bilinear resize
    # costs ~5 thread-ms per 640 px image even at scale 1 (bench/dali_cpu_ops.py). With data.cache the source
    # is the store's BGR pixels at long side imgsz (the graph skips the decode); else the file's bytes.
    if store is not None:
        img, _ = store.image(t.index)
        pixels, same = np.asarray(img), tuple(int(v) for v in store.shapes[t.index]) == t.size
    else:
        pixels, same = _read(index.im_files[t.index]), tuple(int(v) for v in index.shapes[t.index]) == t.size
    interp = int(types.INTERP_NN if same else types.INTERP_LINEAR)
    return (pixels, np.array(t.size, np.float32), np.array(t.start, np.int32), np.array(t.shape, np.int32),
            np.array(interp, np.int32))


def _read(path: str) -> np.ndarray:
    return np.fromfile(path, dtype=np.uint8)


class TrainSource:
    """Endless per-sample stream. Epoch e (from `start_epoch`) is a permutation seeded by (seed, e), agreed by
    every rank, padded with repeats from its start to a multiple of `world` and dealt rank::world, as
    DistributedSampler(drop_last=False): every image every epoch, ceil(n / world) samples per rank. The pipeline's
    batch size is fixed, so the epoch's last batch is filled with repeats flagged valid=0, dropped on the torch
    side. Outputs: per tile (bytes, size, start, shape, interp), then labels, flip, hue, saturation, value,
    index, valid."""

    def __init__(self, index: DatasetIndex, imgsz: int, batch: int, rank: int, world: int, seed: int,
                 augment: Augment, tiles: int, start_epoch: int = 0, skip: int = 0,
                 store: ImageStore | None = None) -> None:
        if len(index) < 1:
            raise ValueError("The train split has no images; add images or fix the train entry of data.yaml.")
        self.index, self.imgsz, self.rank, self.world = index, imgsz, rank, world
        self.seed, self.augment, self.tiles, self.start_epoch = seed, augment, tiles, start_epoch
        self.shard_len = shard_size(len(index), world)
        self.per_epoch = loader_batches_per_epoch(len(index), world, batch) * batch  # pipeline samples per epoch
        self.skip = skip  # samples of `start_epoch` already trained (mid-epoch resume)
        self._shards: dict[int, np.ndarray] = {}  # the current epoch's shard (samples arrive in order)
        self.store = store  # data.cache: decoded pixels instead of file bytes

    def shard(self, epoch: int) -> np.ndarray:
        if epoch not in self._shards:
            perm = np.random.default_rng((self.seed, epoch)).permutation(len(self.index))
            padded = np.resize(perm, self.shard_len * self.world)  # repeats from the start, as DistributedSampler
            self._shards = {epoch: padded[self.rank :: self.world]}
        return self._shards[epoch]

    def epoch_of(self, sample_idx: int) -> tuple[int, int]:
        g = sample_idx + self.skip
        return self.start_epoch + g // self.per_epoch, g % self.per_epoch

    def sample(self, sample_idx: int,
               ) -> tuple[list[Tile], np.ndarray, bool, tuple[float, float, float], int, bool]:
        """Tiles, label rows, flip, (hue degrees, saturation gain, value gain), the main image's index and
        whether the sample is real (False: filler of the epoch's last batch)."""
        epoch, pos = self.epoch_of(sample_idx)
        i = int(self.shard(epoch)[pos % self.shard_len])
        rng = np.random.default_rng((self.seed, epoch, self.rank, pos, 1))
        a, s = self.augment, self.imgsz
        if self.tiles == 4 and rng.random() < a.mosaic:
            others = [int(j) for j in rng.integers(0, len(self.index), size=3)]
            tiles, ratios = mosaic_tiles(self.index, [i, *others], s, rng, a.scale)
            parts = [tile_boxes(self.index, t, _gain(self.index, t.index, r)) for t, r in zip(tiles, ratios,
                                                                                              strict=True)]
        else:
            tile, r = affine_tile(self.index, i, s, rng, a.scale, a.translate)
            parts = [tile_boxes(self.index, tile, _gain(self.index, i, r))]
            tiles = [tile] if self.tiles == 1 else quarter(tile, s)
        cls = np.concatenate([c for c, _ in parts])
        xyxy = np.concatenate([b for _, b in parts]).reshape(-1, 4)
        flip = bool(rng.random() < a.fliplr)
        if flip:
            xyxy = np.stack([s - xyxy[:, 2], xyxy[:, 1], s - xyxy[:, 0], xyxy[:, 3]], 1)
        gains = rng.uniform(-1, 1, 3) * np.array([a.hsv_h, a.hsv_s, a.hsv_v])
        # Ultralytics shifts OpenCV hue (0..180 for 360 degrees) by gain * 180, i.e. gain * 360 degrees.
        hsv = (float(gains[0] * 360), float(1 + gains[1]), float(1 + gains[2]))
        return tiles, _rows(cls, xyxy, (s, s)), flip, hsv, i, pos < self.shard_len

    def __call__(self, info: SampleInfo) -> tuple[np.ndarray, ...]:
        tiles, rows, flip, hsv, i, valid = self.sample(info.idx_in_epoch)
        out: list[np.ndarray] = []
        for t in tiles:
            out += _tile_arrays(self.index, t, self.store)
        return (*out, rows, np.array(flip, np.int32), *(np.array(v, np.float32) for v in hsv),
                np.array([i], np.int64), np.array(valid, np.int32))


class ValSource:
    """Validation samples, every image exactly once across ranks; boxes clipped, never dropped.

    rect: Ultralytics' rectangular batches (`val_batches`: sorted by aspect ratio, batch k on rank k % world,
    each batch letterboxed to its own shape); else the square letterbox, rank taking images rank::world. The
    pipeline's batch size is fixed, so a short batch is filled with repeats of its first image (same shape)
    whose `valid` output is 0; the torch side drops them.
    """

    def __init__(self, index: DatasetIndex, imgsz: int, batch: int, rank: int, world: int,
                 rect: bool = False, store: ImageStore | None = None) -> None:
        self.index, self.imgsz, self.store = index, imgsz, store
        if rect:
            groups = val_batches(index.shapes, imgsz, batch, rank, world)
        else:
            own = list(range(rank, len(index), world))
            groups = [(own[k : k + batch], None) for k in range(0, len(own), batch)]
        self.samples: list[tuple[int, tuple[int, int] | None, bool]] = []
        for ids, shape in groups:
            self.samples += [(i, shape, True) for i in ids] + [(ids[0], shape, False)] * (batch - len(ids))
        self.shapes = {i: shape for ids, shape in groups for i in ids}
        self.n_valid, self.n_batches = sum(len(ids) for ids, _ in groups), len(groups)

    def meta(self, i: int) -> tuple[tuple, tuple[int, int]]:
        """ratio_pad and resized_shape of image i, as the torch backend reports them."""
        _, _, ratio_pad, resized = val_tile(self.index, i, self.imgsz, self.shapes[i])
        return ratio_pad, resized

    def __call__(self, info: SampleInfo) -> tuple[np.ndarray, ...]:
        if info.idx_in_epoch >= len(self.samples):
            raise StopIteration
        i, shape, valid = self.samples[info.idx_in_epoch]
        tile, gain, _, canvas = val_tile(self.index, i, self.imgsz, shape)
        cls, xyxy = tile_boxes(self.index, tile, gain, drop=False)
        return (*_tile_arrays(self.index, tile, self.store), _rows(cls, xyxy, canvas),
                np.array([i], np.int64), np.array(valid, np.int32))
