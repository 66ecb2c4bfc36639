"""The run plan: everything that depends on world size and hardware, derived once and frozen.

It is printed at start, logged, and stored in every checkpoint, so a resumed or rescaled run can
say exactly what it trained with.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass

import torch

from yolo_ddp import dist
from yolo_ddp.config import TrainConfig
from yolo_ddp.schedule import StepSchedule, warmup_batches

# Ordered from least to most capable, so the agreed mode is the minimum across ranks.
AMP_ORDER = ("off", "fp16", "bf16")


@dataclass(frozen=True)
class RunPlan:
    world_size: int
    global_batch: int
    batch_per_rank: int
    accumulate: int  # micro-steps per optimizer step
    effective_batch: int  # images per full optimizer step = batch_per_rank * world_size * accumulate
    nominal_batch: int
    weight_decay: float  # scaled by effective_batch / nominal_batch, as Ultralytics does
    amp: str  # agreed across ranks: off | fp16 | bf16
    sync_bn: bool
    device_type: str
    imgsz: int
    train_images: int
    loader_batches_per_epoch: int  # per rank; the last one holds the remainder (every image, every epoch)
    steps_per_epoch: int  # optimizer steps of an epoch after warmup (warmup epochs have more: accumulate ramps)
    warmup_batches: int  # loader batches of LR/momentum/accumulate warmup (yolo_ddp.schedule)
    epochs: int

    @property
    def schedule(self) -> StepSchedule:
        return StepSchedule(self.loader_batches_per_epoch, self.accumulate, self.warmup_batches, self.epochs)

    @property
    def total_steps(self) -> int:
        return self.schedule.total_steps

    def as_dict(self) -> dict:
        return asdict(self)

    def warnings(self) -> list[str]:
        # Accepted as Ultralytics does (a big global batch on many GPUs is common), but never silently:
        # the nominal batch is what the README promises stays constant, and here it cannot.
        if self.global_batch <= self.nominal_batch:
            return []
        return [f"train.batch={self.global_batch} (global) is above the nominal batch train.nbs={self.nominal_batch}: "
                f"nothing accumulates, each optimizer step sees {self.effective_batch} images and weight decay is "
                f"scaled by {self.effective_batch / self.nominal_batch:.3g}, as Ultralytics does. Pass "
                f"train.nbs={self.global_batch} to make that the nominal batch, or lower train.batch to "
                f"{self.nominal_batch} or less to keep it."]

    def describe(self) -> str:
        rows = [f"  {k:<24} {v}" for k, v in self.as_dict().items()]
        return "Run plan\n" + "\n".join(rows + [f"  WARNING: {w}" for w in self.warnings()])

    def to_json(self) -> str:
        return json.dumps(self.as_dict(), indent=2)


def shard_size(n_images: int, world_size: int) -> int:
    """Images per rank per epoch: DistributedSampler(drop_last=False) pads the shuffled order with repeats so
    every rank gets the same count, and every image is trained every epoch (as Ultralytics' train loader)."""
    return math.ceil(n_images / world_size)


def loader_batches_per_epoch(n_images: int, world_size: int, batch_per_rank: int) -> int:
    """Loader batches per rank per epoch; the last one holds the shard's remainder when it does not divide."""
    return math.ceil(shard_size(n_images, world_size) / batch_per_rank)


def split_global_batch(global_batch: int, world_size: int) -> int:
    """Per-rank batch; refuses a global batch that does not split evenly instead of flooring it."""
    if global_batch % world_size:
        lower = max(world_size, global_batch - global_batch % world_size)
        raise ValueError(
            f"Config key 'train.batch': train.batch={global_batch} is the global batch and must split evenly "
            f"over {world_size} ranks. Use a multiple of {world_size}, e.g. train.batch={lower} or "
            f"train.batch={lower + world_size}."
        )
    return global_batch // world_size


def local_amp_mode(requested: str, device: torch.device) -> str:
    """The best AMP mode this rank's device supports, given what the user asked for."""
    if device.type != "cuda":
        # CPU autocast in bf16 is slower than fp32 on most CPUs; only honour an explicit request.
        return "bf16" if requested == "bf16" else "off"
    if requested == "off":
        return "off"
    if requested in ("auto", "bf16"):
        return "bf16" if native_bf16(device) else "fp16"
    return "fp16"


def native_bf16(device: torch.device) -> bool:
    """bf16 tensor cores (compute capability 8.0+, or ROCm): `torch.cuda.is_bf16_supported()` also says yes
    where bf16 is only emulated (T4, RTX 20xx), many times slower than fp16 there. Asked of `device` itself,
    not of the current device that torch's check reads."""
    return bool(torch.version.hip) or torch.cuda.get_device_capability(device) >= (8, 0)


def agree_amp_mode(requested: str, device: torch.device) -> str:
    """All ranks use the lowest common AMP mode (a mixed cluster must not train with mixed numerics)."""
    local = AMP_ORDER.index(local_amp_mode(requested, device))
    return AMP_ORDER[int(dist.all_reduce_min(float(local), device))]


def time_budget_epochs(hours: float, elapsed_s: float, session_epochs: int, done: int) -> int:
    """`yolo train time=`: the run's epochs re-estimated after an epoch, ceil(budget / mean epoch time of this
    session), as Ultralytics' trainer does; never fewer than the epochs already done (then the run ends)."""
    mean = elapsed_s / max(session_epochs, 1)
    return max(math.ceil(hours * 3600 / max(mean, 1e-9)), done)


def make_plan(
    train: TrainConfig, imgsz: int, world_size: int, amp: str, device_type: str, train_images: int
) -> RunPlan:
    batch_per_rank = split_global_batch(train.batch, world_size)
    if train_images < 1:
        raise ValueError("Config key 'data.path': the training split has no images. Point data.path at a data set "
                         "whose train split lists images.")
    nb = loader_batches_per_epoch(train_images, world_size, batch_per_rank)
    # Ultralytics' accumulation toward the nominal batch, capped by the run's batches (`_build_train_pipeline`).
    accumulate = min(max(round(train.nbs / train.batch), 1), nb * train.epochs)
    effective = batch_per_rank * world_size * accumulate
    below = train.sync_bn_below if device_type == "cuda" else train.sync_bn_below_cpu
    sync_bn = {"on": True, "off": False}.get(train.sync_bn, world_size > 1 and batch_per_rank < below)
    return RunPlan(
        world_size=world_size,
        global_batch=train.batch,
        batch_per_rank=batch_per_rank,
        accumulate=accumulate,
        effective_batch=effective,
        nominal_batch=train.nbs,
        weight_decay=train.weight_decay * effective / train.nbs,
        amp=amp,
        sync_bn=sync_bn and world_size > 1,
        device_type=device_type,
        imgsz=imgsz,
        train_images=train_images,
        loader_batches_per_epoch=nb,
        steps_per_epoch=math.ceil(nb / accumulate),
        warmup_batches=warmup_batches(train.warmup_epochs, train.epochs, nb),
        epochs=train.epochs,
    )
