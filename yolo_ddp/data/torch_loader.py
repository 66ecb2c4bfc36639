"""A torch DataLoader over a `DatasetIndex`, built from Ultralytics' own transforms.

Reusing `LetterBox`/`RandomHSV`/`RandomFlip`/`Format` keeps boxes, colour order and `ratio_pad` bit-compatible with
what `v8DetectionLoss` and the Ultralytics metrics expect; only the index (node-shared memmaps) and the samplers
(DDP sharding without duplicated validation images) are ours.
"""

from __future__ import annotations

import itertools
import math
from typing import Any

import cv2
import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler
from torch.utils.data.distributed import DistributedSampler
from ultralytics.data.augment import (
    Compose,
    Format,
    LetterBox,
    Mosaic,
    RandomFlip,
    RandomHSV,
    RandomPerspective,
)
from ultralytics.data.dataset import YOLODataset
from ultralytics.utils.instance import Instances
from ultralytics.utils.patches import imread

from yolo_ddp.data.dataset import DatasetIndex
from yolo_ddp.dist import get_rank, get_world_size

# Ultralytics' default hyperparameters for the augmentations this backend supports.
AUGMENT_DEFAULTS: dict[str, float] = {"hsv_h": 0.015, "hsv_s": 0.7, "hsv_v": 0.4, "fliplr": 0.5, "mosaic": 0.0,
                                      "scale": 0.5}


class YoloDataset(Dataset[dict[str, Any]]):
    """One letterboxed (and, for training, colour/flip-augmented) sample per index entry.

    With `mosaic > 0`, training samples go through Ultralytics' own `Mosaic` + `RandomPerspective` (as in its
    `v8_transforms`) instead of the letterbox, in epochs before `mosaic_until`; the sampler passes
    `(index, epoch)` so workers know the epoch without being rebuilt.
    """

    # Ultralytics' Mosaic draws its three partner images from `dataset.buffer`, the indices of the last
    # images this worker loaded (cache != "ram"), whose resized pixels are kept: a mosaic then decodes one
    # new image instead of four. Same policy as Ultralytics' BaseDataset, bounded per worker process.
    cache = None
    buffer_size = 64

    def __init__(
        self,
        index: DatasetIndex,
        imgsz: int,
        augment: bool,
        hsv_h: float = 0.015,
        hsv_s: float = 0.7,
        hsv_v: float = 0.4,
        fliplr: float = 0.5,
        mosaic: float = 0.0,
        scale: float = 0.5,
        mosaic_until: int = 0,
    ) -> None:
        self.index, self.imgsz, self.augment, self.mosaic_until = index, imgsz, augment, mosaic_until
        self.buffer: list[int] = []  # Mosaic reads it; `_resized` holds their pixels
        self._resized: dict[int, tuple[np.ndarray, tuple[int, int]]] = {}
        colour_flip: list[Any] = []
        if augment:  # after letterboxing, as in Ultralytics' v8_transforms: HSV/flip on imgsz² pixels only
            colour_flip = [RandomHSV(hgain=hsv_h, sgain=hsv_s, vgain=hsv_v), RandomFlip(p=fliplr, direction="horizontal")]
        fmt = Format(bbox_format="xywh", normalize=True, return_mask=False, return_keypoint=False, batch_idx=True)
        letterbox = LetterBox(new_shape=(imgsz, imgsz), auto=False, scaleup=True, center=True)
        self.transforms = Compose([letterbox, *colour_flip, fmt])
        self.mosaic_transforms = None
        if augment and mosaic > 0:
            self.mosaic_transforms = Compose([
                Mosaic(self, imgsz=imgsz, p=mosaic),
                RandomPerspective(degrees=0.0, translate=0.1, scale=scale, shear=0.0, size=(imgsz, imgsz)),
                *colour_flip, fmt,
            ])

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
        f = self.index.im_files[i]
        img = imread(f)  # BGR HWC uint8; Format flips to RGB CHW
        if img is None:
            raise FileNotFoundError(f"Image {f} could not be read although it passed indexing; was it changed?")
        return img

    def get_image_and_label(self, i: int) -> dict[str, Any]:
        """A sample resized so its long side is imgsz (Ultralytics' `load_image`), as `Mosaic` expects."""
        if i in self._resized:
            img, hw0 = self._resized[i]
            return self._label(i, img.copy(), hw0)  # copy: later transforms write into the image
        img = self._imread(i)
        hw0 = img.shape[:2]
        r = self.imgsz / max(hw0)
        if r != 1:
            size = (min(math.ceil(hw0[1] * r), self.imgsz), min(math.ceil(hw0[0] * r), self.imgsz))
            img = cv2.resize(img, size, interpolation=cv2.INTER_LINEAR)
        self._resized[i] = (img, hw0)
        self.buffer.append(i)
        if len(self.buffer) > self.buffer_size:
            self._resized.pop(self.buffer.pop(0), None)
        return self._label(i, img.copy(), hw0)

    def __getitem__(self, item: int | tuple[int, int]) -> dict[str, Any]:
        i, epoch = item if isinstance(item, tuple) else (item, None)
        if self.mosaic_transforms is not None and epoch is not None and epoch < self.mosaic_until:
            out = self.mosaic_transforms(self.get_image_and_label(i))
            out["ratio_pad"] = ((1.0, 1.0), (0, 0))  # a mosaic has no single source geometry
            return out
        img = self._imread(i)
        hw = img.shape[:2]
        label = self._label(i, img, hw)
        label["ratio_pad"] = (1.0, 1.0)  # LetterBox turns this into ((r, r), (padw, padh))
        return self.transforms(label)


def collate(samples: list[dict[str, Any]]) -> dict[str, Any]:
    """Ultralytics' collate (stack img, concat cls/bboxes, offset batch_idx) with per-image fields as lists."""
    batch = YOLODataset.collate_fn(samples)
    for k in ("im_file", "ori_shape", "resized_shape", "ratio_pad"):
        batch[k] = list(batch[k])
    return batch


class ShardSampler(Sampler[int]):
    """Validation: indices rank::world, no padding, so every image is seen exactly once across ranks.

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


class EpochStreamSampler(Sampler[int]):
    """Epoch after epoch of DistributedSampler shuffles, as one endless stream of (index, epoch).

    One DataLoader iterator then lives for the whole run, so its workers prefetch the next epoch's
    first batches while the current one finishes; a fresh iterator per epoch starts from an empty
    pipeline, which costs a small data set a large share of every epoch. Each epoch contributes
    exactly `batches_per_epoch * batch_per_rank` indices, so batches never straddle two epochs and
    every rank sees the same number of batches.
    """

    def __init__(self, n: int, batch_per_rank: int, batches_per_epoch: int, rank: int, world_size: int,
                 seed: int = 0, start_epoch: int = 0, start_batch: int = 0) -> None:
        self.inner = DistributedSampler(range(n), num_replicas=world_size, rank=rank, shuffle=True, seed=seed,
                                        drop_last=True)
        self.per_epoch = batches_per_epoch * batch_per_rank
        if not 0 < self.per_epoch <= len(self.inner):
            raise ValueError(
                f"{batches_per_epoch} batches of {batch_per_rank} per epoch need {self.per_epoch} images per rank; "
                f"this rank's shard has {len(self.inner)}. Lower the batch size or add images."
            )
        self.start_epoch = start_epoch
        self.skip = start_batch * batch_per_rank  # a mid-epoch resume continues after the batches already trained

    def __iter__(self):
        epoch, skip = self.start_epoch, self.skip
        while True:
            self.inner.set_epoch(epoch)
            yield from ((i, epoch) for i in itertools.islice(iter(self.inner), skip, self.per_epoch))
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
) -> DataLoader:
    """Train: an endless stream of shuffled DDP shards, `batches_per_epoch` full batches per epoch (default:
    every full batch of the shard), starting at `start_epoch` (resume). Val: every image once, never augmented.

    `augment` overrides `AUGMENT_DEFAULTS` for training (None: defaults; zeros disable). Worker RNGs (which the
    Ultralytics transforms draw from: `random` and `np.random`) are seeded by torch from a generator keyed on
    (seed, rank), so streams differ per rank and worker and continue across epochs in persistent workers. With
    workers=0 the transforms use the main process's global RNGs.
    """
    rank, world = (get_rank(), get_world_size()) if torch.distributed.is_initialized() else (0, 1)
    dataset = YoloDataset(index, imgsz, augment=train, mosaic_until=mosaic_until, **_hyp(augment))
    sampler: Sampler[int]
    if train:
        per_rank = len(dataset) // world
        if per_rank < batch_per_rank:
            raise ValueError(
                f"The train split has {len(index)} images, fewer than one batch per rank ({batch_per_rank} x "
                f"{world} ranks) after dropping the remainder. Lower the batch size or add images."
            )
        sampler = EpochStreamSampler(len(dataset), batch_per_rank, batches_per_epoch or per_rank // batch_per_rank,
                                     rank, world, seed, start_epoch, start_batch)
    else:
        sampler = ShardSampler(len(dataset), rank, world)
    generator = torch.Generator()
    generator.manual_seed(int(np.random.SeedSequence([seed, rank]).generate_state(1)[0]))
    loader = DataLoader(
        dataset,
        batch_size=batch_per_rank,
        sampler=sampler,
        num_workers=workers,
        collate_fn=collate,
        pin_memory=pin_memory,
        drop_last=train,
        persistent_workers=workers > 0,
        generator=generator,
    )
    return loader
