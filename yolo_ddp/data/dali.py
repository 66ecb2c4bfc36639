"""NVIDIA DALI data path: decode and augment on the GPU (`mixed` nvJPEG decode), or the same graph on CPU.

The graph is fed by `dali_source` (bytes, augmentation parameters and exact boxes per sample) and yields the
batch dict of the torch backend (`img` uint8 NCHW RGB on the pipeline's device, `batch_idx`, `cls`, normalized
xywh `bboxes`, per-image metadata), so the trainer does not know which backend runs. `img` is DALI's HWC output
permuted to NCHW, a channels_last view: no transpose kernel in the graph, and the channels_last model takes it
as it is.

Per sample: decode (or, with data.cache, the node store's decoded pixels) → resize (bilinear, no antialias, as cv2.INTER_LINEAR) → slice with grey padding (a plain
training sample scaled and shifted as Ultralytics' RandomPerspective, a letterbox for validation; or four tiles
concatenated around a centre, the mosaic) → horizontal flip → HSV. Pipelines have a fixed batch size, so
short batches (an epoch's last training batch, the last validation batch) are filled with samples flagged
`valid=0`, which `to_batch` drops.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch
from nvidia.dali import Pipeline, fn, types
from nvidia.dali.plugin.base_iterator import LastBatchPolicy
from nvidia.dali.plugin.pytorch import DALIGenericIterator

from yolo_ddp.data.dali_source import (
    PAD_VALUE,
    TILE_OUTPUTS,
    Augment,
    TrainSource,
    ValSource,
)
from yolo_ddp.data.dataset import DatasetIndex
from yolo_ddp.data.image_cache import ImageStore
from yolo_ddp.data.torch_loader import check_batches_per_epoch
from yolo_ddp.memory.dali_buffers import is_dali_out_of_memory
from yolo_ddp.memory.oom import OOMUnrecoverable
from yolo_ddp.topology.affinity import cpus_per_rank

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class DaliSettings:
    device_id: int | None  # None: CPU-only pipeline (no CUDA needed)
    threads: int = 0  # DALI worker threads per pipeline; 0 = auto per device
    prefetch: int = 2  # batches prepared ahead
    py_workers: int = -1  # processes running the external source; 0 = the pipeline's thread; -1 = auto

    @property
    def gpu(self) -> bool:
        return self.device_id is not None

    def source_workers(self, train: bool = True) -> int:
        """Auto: on a GPU the per-sample training source (file reads, augmentation parameters, box arithmetic) in
        the training thread would hold the GPU back, so up to 4 processes per rank (half the rank's CPUs: its
        affinity and the cgroup quota, `cpus_per_rank`) run it; on CPU, 0: DALI's CPU threads already take every
        core and a worker would only compete with them. Validation always runs its source inline: its samples
        are a file read and a letterbox, and a parallel source's processes (each importing torch and
        Ultralytics) would stay alive, idle, between evaluations for the whole run."""
        if not train:
            return 0
        if self.py_workers >= 0:
            return self.py_workers
        if not self.gpu:
            return 0
        return min(4, max(1, cpus_per_rank(_local_world()) // 2))

    def num_threads(self) -> int:
        if self.threads:
            return self.threads
        if self.gpu:  # the GPU does the pixel work; threads only feed it
            return 4
        return cpus_per_rank(_local_world())


def _local_world() -> int:
    return int(os.environ.get("LOCAL_WORLD_SIZE", 1))


def _image(encoded, size, start, shape, interp, gpu: bool, decoded: bool):
    if decoded:  # data.cache: the node store's BGR pixels, long side imgsz (yolo_ddp/data/image_cache.py)
        img = fn.reshape(encoded, layout="HWC")
        img = fn.color_space_conversion(img.gpu() if gpu else img, image_type=types.BGR, output_type=types.RGB)
    else:
        img = fn.decoders.image(encoded, device="mixed" if gpu else "cpu", output_type=types.RGB)
    img = fn.resize(img, size=size, antialias=False, interp_type=fn.cast(interp, dtype=types.INTERP_TYPE))
    return fn.slice(img, start=start, shape=shape, axes=[0, 1], out_of_bounds_policy="pad", fill_values=PAD_VALUE)


def _pipeline(source, tiles: int, batch: int, settings: DaliSettings, augment: Augment, train: bool) -> Pipeline:
    k = TILE_OUTPUTS
    n_out = k * tiles + (7 if train else 3)
    workers = settings.source_workers(train)
    # Parallel sources run in spawned processes (no fork beside a CUDA context); the sources are picklable.
    pipe = Pipeline(batch_size=batch, num_threads=settings.num_threads(), device_id=settings.device_id,
                    prefetch_queue_depth=settings.prefetch, py_num_workers=max(1, workers),
                    py_start_method="spawn", seed=0)
    with pipe:
        outs = fn.external_source(source=source, num_outputs=n_out, batch=False, parallel=workers > 0,
                                  **({"prefetch_queue_depth": settings.prefetch} if workers else {}))
        decoded = getattr(source, "store", None) is not None
        parts = [_image(*outs[k * t : k * t + k], settings.gpu, decoded) for t in range(tiles)]
        if tiles == 4:
            img = fn.cat(fn.cat(parts[0], parts[1], axis=1), fn.cat(parts[2], parts[3], axis=1), axis=0)
        else:
            img = parts[0]
        rest = outs[k * tiles :]
        labels = fn.pad(rest[0], fill_value=-1.0, axes=(0,))  # dense batch for the iterator; sentinels stripped
        if train:
            flip, hue, sat, val, *extra = rest[1:]  # extra: index, valid
            if augment.fliplr:
                img = fn.flip(img, horizontal=flip)
            if augment.hsv:
                img = fn.hsv(img, hue=hue, saturation=sat, value=val)
        else:
            extra = list(rest[1:])  # index, valid
        pipe.set_outputs(img, labels, *extra)  # HWC: to_batch permutes it into a channels_last NCHW view
    return pipe


def _iterator(pipe: Pipeline, train: bool) -> DALIGenericIterator:
    return DALIGenericIterator(pipe, ["img", "labels", "index", "valid"], auto_reset=not train,
                               last_batch_policy=LastBatchPolicy.PARTIAL, dynamic_shape=True,
                               prepare_first_batch=False)


Meta = Callable[[int], tuple[tuple, tuple[int, int]]]  # image index → (ratio_pad, resized_shape)


def to_batch(out: dict[str, torch.Tensor], index: DatasetIndex, meta: Meta) -> dict[str, Any]:
    """DALI outputs → the torch backend's batch dict; drops padded label rows and filler samples."""
    n = int(out["valid"].sum())  # fillers sit at the end of a batch
    img, labels, ids = out["img"][:n].permute(0, 3, 1, 2), out["labels"][:n], out["index"][:n].view(-1).tolist()
    mask = labels[..., 0] >= 0
    rows = labels[mask]
    metas = [meta(i) for i in ids]
    return {
        "img": img,
        "batch_idx": mask.nonzero()[:, 0].float(),
        "cls": rows[:, :1].contiguous(),
        "bboxes": rows[:, 1:].contiguous(),
        "im_file": [index.im_files[i] for i in ids],
        "ori_shape": [tuple(int(v) for v in index.shapes[i]) for i in ids],
        "resized_shape": [resized for _, resized in metas],
        "ratio_pad": [ratio_pad for ratio_pad, _ in metas],
    }


class DaliOutOfMemory(OOMUnrecoverable):
    """DALI's allocator failed on the GPU: splitting the step cannot help, as the pipeline's batch is fixed."""


@contextmanager
def oom_advice(settings: DaliSettings, batch: int, what: str) -> Iterator[None]:
    """Turn a DALI allocation failure into the one-paragraph advice a torch OOM gets."""
    try:
        yield
    except (RuntimeError, MemoryError) as e:
        if isinstance(e, OOMUnrecoverable) or not is_dali_out_of_memory(e):
            raise
        lines = [line.strip() for line in str(e).splitlines() if line.strip()]
        cause = next((line for line in lines if is_dali_out_of_memory(RuntimeError(line))), type(e).__name__)
        where = f"cuda:{settings.device_id}" if settings.gpu else "the host"
        raise DaliOutOfMemory(
            f"Out of memory in DALI on {where} while {what} ({cause}). DALI's buffers live outside torch's "
            f"allocator; the memory plan budgets them (the 'DALI buffers' lines of memory_plan.json) for "
            f"data.dali.prefetch={settings.prefetch} batches in flight of {batch} sample(s). Fix: lower "
            f"data.dali.prefetch (1 is the least), train.batch or train.memory_fraction (which leaves DALI more of "
            f"the device), data.imgsz, or use data.backend=torch."
        ) from e


class DaliTrainStream:
    """Endless training batches: every image every epoch, `batches_per_epoch` per epoch on every rank (checked
    against `loader_batches_per_epoch`; None: that number), the last one holding the shard's remainder.

    Mosaic epochs and the final `close_mosaic` epochs use two graphs (four decodes vs one per sample); the
    stream switches graphs at the epoch boundary, as Ultralytics rebuilds its loader there.
    """

    def __init__(self, index: DatasetIndex, imgsz: int, batch: int, batches_per_epoch: int | None, rank: int,
                 world: int, seed: int, augment: Augment, settings: DaliSettings, mosaic_until: int,
                 start_epoch: int = 0, start_batch: int = 0, store: ImageStore | None = None) -> None:
        self.store = store
        self.batches_per_epoch = check_batches_per_epoch(len(index), world, batch, batches_per_epoch)
        self.index, self.imgsz, self.batch = index, imgsz, batch
        self.rank, self.world, self.seed, self.augment, self.settings = rank, world, seed, augment, settings
        self.mosaic_until, self.start_epoch, self.start_batch = mosaic_until, start_epoch, start_batch

    def _meta(self, i: int) -> tuple[tuple, tuple[int, int]]:
        return ((1.0, 1.0), (0, 0)), (self.imgsz, self.imgsz)  # as the torch backend: no geometry to undo

    def _open(self, tiles: int, epoch: int, skip_batches: int) -> DALIGenericIterator:
        source = TrainSource(self.index, self.imgsz, self.batch, self.rank, self.world, self.seed, self.augment,
                             tiles, start_epoch=epoch, skip=skip_batches * self.batch, store=self.store)
        with oom_advice(self.settings, self.batch, "building the training pipeline"):
            return _iterator(_pipeline(source, tiles, self.batch, self.settings, self.augment, train=True),
                             train=True)

    def __iter__(self) -> Iterator[dict[str, Any]]:
        epoch, tiles, it, skip = self.start_epoch, 0, None, self.start_batch
        while True:
            want = 4 if self.augment.mosaic > 0 and epoch < self.mosaic_until else 1
            if want != tiles:
                if it is not None:
                    log.info("epoch %d: mosaic off for the last epochs (close_mosaic)", epoch + 1)
                tiles, it = want, None  # drop the old pipeline (and its prefetched batches) first
                it = self._open(tiles, epoch, skip)
            for _ in range(self.batches_per_epoch - skip):
                with oom_advice(self.settings, self.batch, "preparing a training batch"):
                    out = next(it)[0]
                yield to_batch(out, self.index, self._meta)
            epoch, skip = epoch + 1, 0


class DaliValLoader:
    """Every validation image exactly once across ranks, letterboxed (`rect`: into Ultralytics' rectangular
    batch shapes, as the torch backend's val loader); re-iterable once per evaluation."""

    def __init__(self, index: DatasetIndex, imgsz: int, batch: int, rank: int, world: int,
                 settings: DaliSettings, rect: bool = False, store: ImageStore | None = None) -> None:
        self.index, self.imgsz, self.batch, self.settings = index, imgsz, batch, settings
        self.source = ValSource(index, imgsz, batch, rank, world, rect, store if rect else None)
        self._it: DALIGenericIterator | None = None
        if self.source.n_valid:
            with oom_advice(settings, batch, "building the validation pipeline"):
                self._it = _iterator(_pipeline(self.source, 1, batch, settings, Augment(), train=False), train=False)

    def __len__(self) -> int:
        return self.source.n_batches

    def __iter__(self) -> Iterator[dict[str, Any]]:
        if self._it is None:
            return
        batches = iter(self._it)
        while True:
            try:
                with oom_advice(self.settings, self.batch, "preparing a validation batch"):
                    out = next(batches)[0]
            except StopIteration:  # the epoch's end (the iterator resets itself for the next evaluation)
                return
            yield to_batch(out, self.index, self.source.meta)
