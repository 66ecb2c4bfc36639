"""Pick the data backend (`data.backend=auto|dali|torch`) and build its train stream and validation loader.

`auto` is DALI on CUDA and the torch DataLoader on CPU: measured on a 2-core machine, DALI's CPU pipeline does
not beat OpenCV in DataLoader workers (bench/data_throughput.py, bench/RESULTS.md).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

import torch

from yolo_ddp.config import DataConfig
from yolo_ddp.data.dataset import DatasetIndex

if TYPE_CHECKING:
    from yolo_ddp.data.image_cache import ImageStore

log = logging.getLogger(__name__)
# `yolo train` augmentations the DALI pipeline does not implement (yolo_ddp/data/dali.py): only the torch
# backend, which runs Ultralytics' own v8_transforms, applies them.
TORCH_ONLY_AUGMENT = ("degrees", "shear", "perspective", "flipud", "bgr", "mixup", "cutmix")
AUGMENT_KEYS = ("hsv_h", "hsv_s", "hsv_v", "fliplr", "mosaic", "scale", "translate", *TORCH_ONLY_AUGMENT)


def torch_only_augment(data: DataConfig) -> list[str]:
    """The run's non-zero augmentations that only the torch backend applies, as `key=value`."""
    return [f"data.{k}={getattr(data, k)}" for k in TORCH_ONLY_AUGMENT if getattr(data, k)]


def resolve_backend(data: DataConfig, device: torch.device) -> str:
    needs_torch = torch_only_augment(data) + (["data.sampler=balanced"] if data.sampler == "balanced" else []) + \
        ([f"data.tile={data.tile}"] if data.tile else [])
    if data.backend != "auto":
        if data.backend == "dali":
            if needs_torch:
                raise ValueError(
                    f"data.backend=dali cannot apply {', '.join(needs_torch)}: the DALI pipeline implements mosaic, "
                    "the scale/translate affine, HSV and horizontal flips on whole images, and shards uniformly. Set "
                    "data.backend=torch (Ultralytics' own transforms, every `yolo train` augmentation, the balanced "
                    "sampler, tiles) or set those keys to their defaults."
                )
            _require_dali()
        return data.backend
    if device.type != "cuda":
        return "torch"
    if needs_torch:
        log.info("data.backend=auto: the torch backend, as DALI cannot apply %s", ", ".join(needs_torch))
        return "torch"
    try:
        _require_dali()
    except ValueError as e:
        log.warning("%s Falling back to the torch DataLoader backend.", e)
        return "torch"
    return "dali"


def _require_dali() -> None:
    try:
        import nvidia.dali  # noqa: F401
    except ImportError as e:
        raise ValueError(
            f"data.backend=dali needs NVIDIA DALI, which failed to import ({e}). Install the build for torch's CUDA "
            "major with `make install` (CUDA=13 by default: nvidia-dali-cuda130; `python -m launcher.doctor` "
            "says which), or set data.backend=torch."
        ) from e


def _augment(data: DataConfig, mosaic: bool):
    from yolo_ddp.data.dali_source import Augment

    return Augment(data.hsv_h, data.hsv_s, data.hsv_v, data.fliplr, data.mosaic if mosaic else 0.0, data.scale,
                   data.translate)


def _dali_settings(data: DataConfig, device: torch.device):
    from yolo_ddp.data.dali import DaliSettings

    device_id = device.index if device.type == "cuda" else None
    return DaliSettings(device_id, data.dali.threads, data.dali.prefetch, data.dali.py_workers)


def build_train_stream(data: DataConfig, backend: str, index: DatasetIndex, batch_per_rank: int,
                       batches_per_epoch: int, epochs: int, seed: int, device: torch.device, rank: int, world: int,
                       start_epoch: int = 0, start_batch: int = 0, weights: Any = None,
                       store: ImageStore | None = None) -> Iterable[dict[str, Any]]:
    """Endless batches from batch `start_batch` of epoch `start_epoch` on (a resume from a mid-epoch checkpoint).

    Every image every epoch, as Ultralytics: each rank's shard is DistributedSampler(shuffle, drop_last=False)'s,
    `shard_size(n, world)` images (the shuffled order padded with repeats), yielded as full batches of
    `batch_per_rank` and a last partial one. `batches_per_epoch` must be `loader_batches_per_epoch(n, world,
    batch_per_rank)`; anything else is a ValueError, as the caller's schedule would then drift from the data.
    `store`: data.cache's decoded images of `index` (yolo_ddp/data/image_cache.py), read instead of the files.
    """
    from yolo_ddp.data.torch_loader import check_batches_per_epoch

    check_batches_per_epoch(len(index), world, batch_per_rank, batches_per_epoch)
    if backend == "dali":
        from yolo_ddp.data.dali import DaliTrainStream

        return DaliTrainStream(index, data.imgsz, batch_per_rank, batches_per_epoch, rank, world, seed,
                               _augment(data, mosaic=True), _dali_settings(data, device),
                               mosaic_until=max(0, epochs - data.close_mosaic), start_epoch=start_epoch,
                               start_batch=start_batch, store=store)
    from yolo_ddp.data.torch_loader import build_loader

    aug = {k: getattr(data, k) for k in AUGMENT_KEYS}
    return build_loader(index, data.imgsz, batch_per_rank, data.workers, train=True, seed=seed, augment=aug,
                        pin_memory=device.type == "cuda", start_epoch=start_epoch,
                        batches_per_epoch=batches_per_epoch, mosaic_until=max(0, epochs - data.close_mosaic),
                        start_batch=start_batch, rank=rank, world=world, weights=weights, store=store)


def set_mosaic_until(stream: Iterable[dict[str, Any]], epoch: int) -> None:
    """Close the mosaic from `epoch` on in a running train stream (train.time re-plans the run's epochs). Both
    backends decide per batch in this process; batches already prefetched keep their decision."""
    target = getattr(stream, "batch_sampler", stream)  # the torch DataLoader's EpochBatchSampler, or DaliTrainStream
    target.mosaic_until = epoch


def build_val_loader(data: DataConfig, backend: str, index: DatasetIndex, batch_per_rank: int,
                     device: torch.device, rank: int, world: int,
                     store: ImageStore | None = None) -> Iterable[dict[str, Any]]:
    """Every image exactly once across ranks, re-iterable once per evaluation.

    `data.val_rect` (default): Ultralytics' validator batches, images sorted by aspect ratio and each batch
    letterboxed to its own (h, w), multiples of 32 that differ between batches; batch k of that order runs on
    rank k % world, so batch shapes match a single-process run with this batch size. Otherwise imgsz x imgsz.
    `store` (data.cache) serves the rectangular batches, whose first step is the cached `load_image`; the
    square letterbox resizes from the source and reads the files.
    """
    if backend == "dali":
        from yolo_ddp.data.dali import DaliValLoader

        return DaliValLoader(index, data.imgsz, batch_per_rank, rank, world, _dali_settings(data, device),
                             rect=data.val_rect, store=store)
    from yolo_ddp.data.torch_loader import build_loader

    loader = build_loader(index, data.imgsz, batch_per_rank, data.workers, train=False,
                          pin_memory=device.type == "cuda", rank=rank, world=world, rect=data.val_rect,
                          store=store if data.val_rect else None)
    if loader.num_workers > 0:
        # Fork the persistent workers now, before training starts threads (train loader feeders, the progress
        # bar), not at the first validation: a fork beside those threads once left a worker hung at birth.
        iter(loader)
    return loader
