"""A torch DataLoader over a `DatasetIndex`, built from Ultralytics' own transforms.

Reusing `Mosaic`/`RandomPerspective`/`LetterBox`/`RandomHSV`/`RandomFlip`/`Format` keeps boxes, colour order and
`ratio_pad` bit-compatible with what `v8DetectionLoss` and the Ultralytics metrics expect; only the index
(node-shared memmaps) and the samplers (DDP sharding, rectangular validation batches spread over ranks) are ours.
The geometry helpers here (`rect_batches`, `val_batches`) are shared with the DALI backend.
"""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler
from torch.utils.data.distributed import DistributedSampler
from ultralytics.cfg import get_cfg
from ultralytics.data.augment import Compose, Format, LetterBox, v8_transforms
from ultralytics.data.base import BaseDataset
from ultralytics.data.dataset import YOLODataset
from ultralytics.utils.instance import Instances

from yolo_ddp.data.balance import epoch_draw, rank_shard
from yolo_ddp.data.dataset import DatasetIndex
from yolo_ddp.data.image_cache import ImageStore, load_resized, read_bgr
from yolo_ddp.dist import get_rank, get_world_size
from yolo_ddp.plan import loader_batches_per_epoch

# `yolo train`'s augmentation hyperparameters this backend takes, with Ultralytics' defaults (mosaic: off here).
AUGMENT_DEFAULTS: dict[str, float] = {"hsv_h": 0.015, "hsv_s": 0.7, "hsv_v": 0.4, "fliplr": 0.5, "mosaic": 0.0,
                                      "translate": 0.1, "scale": 0.5, "degrees": 0.0, "shear": 0.0,
                                      "perspective": 0.0, "flipud": 0.0, "bgr": 0.0, "mixup": 0.0, "cutmix": 0.0}
# What Ultralytics' `close_mosaic` turns off (YOLODataset.close_mosaic).
CLOSED_BY_MOSAIC = ("mosaic", "mixup", "cutmix")
# Rectangular validation as Ultralytics' validator builds it: stride = the model's largest (32 for YOLOv8/11),
# pad = 0.5 (build_yolo_dataset's value for mode != "train").
RECT_STRIDE, RECT_PAD = 32, 0.5


def rect_batches(shapes: np.ndarray, imgsz: int, batch: int) -> tuple[np.ndarray, np.ndarray]:
    """Image indices sorted by aspect ratio, and each batch's (h, w): Ultralytics' rectangular batches.

    Runs `BaseDataset.set_rectangle` itself on a stand-in holding only what it reads, so the order (its
    argsort) and the shapes (ceil(imgsz * shape / stride + pad) * stride) are Ultralytics' by construction.
    Batch k holds order[k * batch : (k + 1) * batch].
    """
    n = len(shapes)
    if n == 0:
        return np.zeros(0, np.int64), np.zeros((0, 2), np.int64)
    stub = SimpleNamespace(ni=n, batch_size=batch, imgsz=imgsz, stride=RECT_STRIDE, pad=RECT_PAD,
                           im_files=list(range(n)), labels=[{"shape": (int(h), int(w))} for h, w in shapes])
    BaseDataset.set_rectangle(stub)  # type: ignore[arg-type]
    return np.asarray(stub.im_files, np.int64), np.asarray(stub.batch_shapes)


def val_batches(shapes: np.ndarray, imgsz: int, batch: int, rank: int, world: int,
                ) -> list[tuple[list[int], tuple[int, int]]]:
    """This rank's rectangular validation batches as (image indices, (h, w)).

    Batch k of the single-process order goes to rank k % world: every image is scored once, and each batch
    keeps the shape a single-process `yolo val` with this batch size gives it.
    """
    order, batch_shapes = rect_batches(shapes, imgsz, batch)
    return [(order[k * batch : (k + 1) * batch].tolist(), (int(batch_shapes[k][0]), int(batch_shapes[k][1])))
            for k in range(rank, len(batch_shapes), world)]


def check_batches_per_epoch(n: int, world: int, batch_per_rank: int, given: int | None) -> int:
    """Loader batches per rank per epoch (every image every epoch); refuses a caller that expects another count."""
    if n < 1:
        raise ValueError("The train split has no images; add images or fix the train entry of data.yaml.")
    want = loader_batches_per_epoch(n, world, batch_per_rank)
    if given is not None and given != want:
        raise ValueError(
            f"batches_per_epoch={given}, but {n} images over {world} rank(s) in batches of {batch_per_rank} make "
            f"{want} loader batches per rank per epoch (yolo_ddp.plan.loader_batches_per_epoch): every image is "
            "trained every epoch, the last batch holding the remainder. Pass that number."
        )
    return want


class YoloDataset(Dataset[dict[str, Any]]):
    """Training samples in Ultralytics' order, or letterboxed validation samples.

    Training (`augment=True`): Ultralytics' own `v8_transforms` and `Format(bgr=)`, built twice as its
    `YOLODataset` builds them: with the run's mosaic/mixup/cutmix for epochs before `mosaic_until`, and with those
    zeroed after (its `close_mosaic`). Each sample starts from `load_image` (long side imgsz). The sampler passes
    `(index, epoch)` so workers know the epoch without being rebuilt. Same seed, same output as Ultralytics'
    dataset (tests/test_yolo_args.py).

    Validation: with `rect_shapes` (image index → its batch's (h, w)), Ultralytics' rect validation:
    `load_image` then `LetterBox(scaleup=False)` into the batch shape; without, a square letterbox to imgsz.
    """

    # Ultralytics' Mosaic (and MixUp, CutMix) draw partner images from `dataset.buffer`, the indices of the last
    # images this worker loaded (cache != "ram"), whose resized pixels are kept: a mosaic then decodes one new
    # image instead of four. Same policy and bound as Ultralytics' BaseDataset, per worker process:
    # `max_buffer_length` = min(images, 8 x the rank's batch, 1000); `build_loader` sets it so.
    cache = None
    buffer_size = 64

    def __init__(
        self,
        index: DatasetIndex,
        imgsz: int,
        augment: bool,
        mosaic_until: int = 0,
        rect_shapes: dict[int, tuple[int, int]] | None = None,
        store: ImageStore | None = None,
        **hyp: float,
    ) -> None:
        self.index, self.imgsz, self.augment, self.mosaic_until = index, imgsz, augment, mosaic_until
        self.rect_shapes, self.store = rect_shapes, store
        self.data: dict[str, Any] = {}  # v8_transforms reads data.yaml extras (flip_idx) from it; detection has none
        self.buffer: list[int] = []  # Mosaic reads it; `_resized` holds their pixels
        self._resized: dict[int, tuple[np.ndarray, tuple[int, int]]] = {}
        self.mosaic_transforms = None
        if augment:
            hyp = _hyp(hyp)
            closed = {**hyp, **dict.fromkeys(CLOSED_BY_MOSAIC, 0.0)}
            self.transforms = self._train_transforms(closed)
            if any(hyp[k] > 0 for k in CLOSED_BY_MOSAIC):
                self.mosaic_transforms = self._train_transforms(hyp)
        elif rect_shapes is not None:  # the batch shape arrives as the label's rect_shape, as in Ultralytics
            self.transforms = Compose([LetterBox(new_shape=imgsz, scaleup=False), _format(0.0)])
        else:
            self.transforms = Compose([LetterBox(new_shape=(imgsz, imgsz), auto=False, scaleup=True, center=True),
                                       _format(0.0)])

    def _train_transforms(self, hyp: dict[str, float]) -> Compose:
        ns = get_cfg(overrides={**hyp, "copy_paste": 0.0})  # Ultralytics' own namespace (copy_paste_mode, ...)
        transforms = v8_transforms(self, self.imgsz, ns)
        transforms.append(_format(ns.bgr))
        return transforms

    def __len__(self) -> int:
        return len(self.index)

    def _label(self, i: int, img: np.ndarray, ori_hw: tuple[int, int]) -> dict[str, Any]:
        lb = np.array(self.index.labels_for(i), dtype=np.float32)  # copy: Instances edits boxes in place
        return {
            "im_file": self.index.im_files[i],
            "img": img,
            "ori_shape": ori_hw,
            "resized_shape": img.shape[:2],
            "ratio_pad": (img.shape[0] / ori_hw[0], img.shape[1] / ori_hw[1]),  # LetterBox completes this
            "cls": lb[:, :1].copy(),
            "instances": Instances(
                lb[:, 1:].copy(), segments=np.zeros((0, 0, 2), np.float32), bbox_format="xywh", normalized=True
            ),
        }

    def _imread(self, i: int) -> np.ndarray:
        return read_bgr(self.index.im_files[i], self.index.window(i))  # Format flips BGR to RGB CHW

    def load_image(self, i: int) -> tuple[np.ndarray, tuple[int, int]]:
        """Ultralytics' `load_image` (rect_mode): long side to imgsz, cv2.INTER_LINEAR; from the node's image store
        under data.cache (a read-only view: callers copy before editing), else decoded now."""
        if self.store is not None:
            return self.store.image(i)
        return load_resized(self.index.im_files[i], self.imgsz, self.index.window(i))

    def get_image_and_label(self, i: int) -> dict[str, Any]:
        """A `load_image` sample, kept in the mosaic buffer, as Ultralytics' transforms expect."""
        if i in self._resized:
            img, hw0 = self._resized[i]
            return self._label(i, img.copy(), hw0)  # copy: later transforms write into the image
        img, hw0 = self.load_image(i)
        self._resized[i] = (img, hw0)  # under data.cache a view of the node's store: no copy is kept
        self.buffer.append(i)
        if 1 < len(self.buffer) >= self.buffer_size:  # Ultralytics' eviction rule, to the letter
            self._resized.pop(self.buffer.pop(0), None)
        return self._label(i, img.copy(), hw0)

    def __getitem__(self, item: int | tuple[int, int]) -> dict[str, Any]:
        i, epoch, *decided = item if isinstance(item, tuple) else (item, None)
        if self.augment:
            # The sampler decides in the main process (it may move mosaic_until: train.time re-plans epochs).
            open_ = decided[0] if decided else epoch is not None and epoch < self.mosaic_until
            mosaic = self.mosaic_transforms is not None and open_
            out = (self.mosaic_transforms if mosaic else self.transforms)(self.get_image_and_label(i))
            out["ratio_pad"] = ((1.0, 1.0), (0, 0))  # an augmented sample has no source geometry to undo
            return out
        if self.rect_shapes is not None:
            img, hw0 = self.load_image(i)
            label = self._label(i, np.array(img), hw0)
            label["rect_shape"] = self.rect_shapes[i]
        else:
            img = self._imread(i)
            label = self._label(i, img, img.shape[:2])
            label["ratio_pad"] = (1.0, 1.0)  # LetterBox turns this into ((r, r), (padw, padh))
        out = self.transforms(label)
        out["index"] = i  # which sample: whole-board scoring finds a tile's window by it
        return out


def mosaic_buffer_size(n_images: int, batch_per_rank: int) -> int:
    """Ultralytics' `BaseDataset.max_buffer_length` for a training set: the mosaic partners' pool per worker."""
    return min(n_images, batch_per_rank * 8, 1000)


def _format(bgr: float) -> Format:
    return Format(bbox_format="xywh", normalize=True, return_mask=False, return_keypoint=False, batch_idx=True,
                  bgr=bgr)


def collate(samples: list[dict[str, Any]]) -> dict[str, Any]:
    """Ultralytics' collate (stack img, concat cls/bboxes, offset batch_idx) with per-image fields as lists."""
    batch = YOLODataset.collate_fn(samples)
    for k in ("im_file", "ori_shape", "resized_shape", "ratio_pad"):
        batch[k] = [tuple(int(v) for v in x) if k == "resized_shape" else x for x in batch[k]]
    return batch


class ShardSampler(Sampler[int]):
    """Square validation: indices rank::world, no padding, so every image is seen exactly once across ranks.

    DistributedSampler pads with repeated images to equalise rank sizes, which double-counts them in metrics.
    """

    def __init__(self, n: int, rank: int | None = None, world_size: int | None = None) -> None:
        self.n = n
        self.rank = get_rank() if rank is None else rank
        self.world_size = get_world_size() if world_size is None else world_size
        if not 0 <= self.rank < self.world_size:
            raise ValueError(f"rank {self.rank} is outside world size {self.world_size}")

    def __iter__(self):
        return iter(range(self.rank, self.n, self.world_size))

    def __len__(self) -> int:
        return len(range(self.rank, self.n, self.world_size))

    def set_epoch(self, epoch: int) -> None:
        """No-op, so a trainer can call set_epoch on train and val samplers alike."""


class EpochBatchSampler(Sampler[list[tuple[int, int]]]):
    """Epoch after epoch of DistributedSampler(shuffle, drop_last=False) shards, as one endless stream of batches
    of (index, epoch, mosaic): mosaic is epoch < `mosaic_until`, read when the batch is drawn, so a re-planned
    run (train.time) moves close_mosaic without restarting the workers.

    Every image is trained every epoch: the shuffled order is padded with repeats from its start to a multiple
    of the world size, so each rank's shard has ceil(n / world) images, cut into full batches and one last
    partial batch when it does not divide. Batches never straddle two epochs, and every rank yields
    `batches_per_epoch` per epoch. One DataLoader iterator lives for the whole run, so its workers prefetch
    the next epoch's first batches while the current one finishes.
    """

    def __init__(self, n: int, batch_per_rank: int, rank: int, world_size: int, seed: int = 0,
                 start_epoch: int = 0, start_batch: int = 0, mosaic_until: int = 0,
                 weights: np.ndarray | None = None) -> None:
        self.mosaic_until = mosaic_until
        self.weights, self.seed, self.rank, self.world = weights, seed, rank, world_size  # data.sampler=balanced
        self.batches_per_epoch = check_batches_per_epoch(n, world_size, batch_per_rank, None)
        self.inner = DistributedSampler(range(n), num_replicas=world_size, rank=rank, shuffle=True, seed=seed,
                                        drop_last=False)
        self.batch, self.start_epoch = batch_per_rank, start_epoch
        self.start_batch = start_batch  # a mid-epoch resume continues after the batches already trained

    def __iter__(self):
        epoch, skip = self.start_epoch, self.start_batch
        while True:
            if self.weights is None:
                self.inner.set_epoch(epoch)
                shard = list(self.inner)
            else:  # the same weighted draw on every rank, this rank's positions of it (yolo_ddp/data/balance.py)
                shard = rank_shard(epoch_draw(self.weights, self.seed, epoch), self.rank, self.world)
            for b in range(skip, self.batches_per_epoch):
                mosaic = epoch < self.mosaic_until
                yield [(i, epoch, mosaic) for i in shard[b * self.batch : (b + 1) * self.batch]]
            epoch, skip = epoch + 1, 0


def _hyp(augment: dict[str, Any] | None) -> dict[str, float]:
    unknown = set(augment or {}) - set(AUGMENT_DEFAULTS)
    if unknown:
        raise ValueError(
            f"Unknown augmentation keys {sorted(unknown)}; supported: {sorted(AUGMENT_DEFAULTS)}."
        )
    return {**AUGMENT_DEFAULTS, **(augment or {})}


def build_loader(
    index: DatasetIndex,
    imgsz: int,
    batch_per_rank: int,
    workers: int,
    train: bool,
    seed: int = 0,
    augment: dict[str, Any] | None = None,
    pin_memory: bool = False,
    batches_per_epoch: int | None = None,
    start_epoch: int = 0,
    mosaic_until: int = 0,
    start_batch: int = 0,
    rank: int | None = None,
    world: int | None = None,
    rect: bool = False,
    weights: np.ndarray | None = None,
    store: ImageStore | None = None,
) -> DataLoader:
    """Train: an endless stream of shuffled DDP shards, every image every epoch in `batches_per_epoch` batches
    (checked against `loader_batches_per_epoch`; None: that number), from batch `start_batch` of `start_epoch`
    on (resume). Val: every image once across ranks, never augmented; `rect`: Ultralytics' rectangular batches.

    `rank`/`world` default to the process group's. `augment` overrides `AUGMENT_DEFAULTS` for training (None:
    defaults; zeros disable). Worker RNGs (which the Ultralytics transforms draw from: `random` and `np.random`)
    are seeded by torch from a generator keyed on (seed, rank), so streams differ per rank and worker and continue
    across epochs in persistent workers. With workers=0 the transforms use the main process's global RNGs.
    `store` (data.cache): the node's decoded images of `index`, read instead of the files (train and rect val).
    """
    if rank is None or world is None:
        rank, world = (get_rank(), get_world_size()) if torch.distributed.is_initialized() else (0, 1)
    loader_args: dict[str, Any]
    if train:
        check_batches_per_epoch(len(index), world, batch_per_rank, batches_per_epoch)
        dataset = YoloDataset(index, imgsz, augment=True, mosaic_until=mosaic_until, store=store, **_hyp(augment))
        dataset.buffer_size = mosaic_buffer_size(len(index), batch_per_rank)
        sampler = EpochBatchSampler(len(index), batch_per_rank, rank, world, seed, start_epoch, start_batch,
                                    mosaic_until, weights)
        loader_args = {"batch_sampler": sampler}
    elif rect:
        batches = val_batches(index.shapes, imgsz, batch_per_rank, rank, world)
        shapes = {i: shape for ids, shape in batches for i in ids}
        dataset = YoloDataset(index, imgsz, augment=False, rect_shapes=shapes, store=store)
        loader_args = {"batch_sampler": [ids for ids, _ in batches]}
    else:
        dataset = YoloDataset(index, imgsz, augment=False)
        loader_args = {"batch_size": batch_per_rank, "sampler": ShardSampler(len(index), rank, world)}
    generator = torch.Generator()
    generator.manual_seed(int(np.random.SeedSequence([seed, rank]).generate_state(1)[0]))
    return DataLoader(dataset, num_workers=workers, collate_fn=collate, pin_memory=pin_memory,
                      persistent_workers=workers > 0, generator=generator, **loader_args)
