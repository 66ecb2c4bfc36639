"""The training step and epoch: DDP, AMP and gradient accumulation readable in one screen.

Loss semantics follow Ultralytics: its criterion returns the loss summed over the local batch; DDP
averages gradients over ranks, so multiplying by world size makes every optimizer step's gradient
the sum over all `effective_batch` images — the same update as one process on the union batch.
Non-final micro-steps run under `no_sync()`, so there is exactly one all-reduce per optimizer step.
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Iterator
from contextlib import nullcontext
from dataclasses import dataclass, field
from typing import Any

import torch
from torch.nn.parallel import DistributedDataParallel as DDP

from yolo_ddp import dist
from yolo_ddp.config import TrainConfig
from yolo_ddp.log import NullWriter
from yolo_ddp.optim import warmup_momentum
from yolo_ddp.plan import RunPlan

LOSS_NAMES = ("box_loss", "cls_loss", "dfl_loss")


@dataclass
class TrainState:
    """Everything that changes while training; `state_dict()` is what `last.pt` stores."""

    model: torch.nn.Module  # DDP-wrapped when world > 1
    raw: torch.nn.Module  # the DetectionModel itself
    criterion: Any
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    scaler: torch.amp.GradScaler
    ema: Any = None  # ultralytics ModelEMA
    epoch: int = 0  # completed epochs
    step: int = 0  # completed optimizer steps
    best_fitness: float = float("-inf")
    extra: dict = field(default_factory=dict)

    def state_dict(self) -> dict[str, Any]:
        return {
            "model": self.raw.state_dict(),
            "ema": self.ema.ema.state_dict() if self.ema else None,
            "ema_updates": self.ema.updates if self.ema else 0,
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict(),
            "epoch": self.epoch,
            "step": self.step,
            "best_fitness": self.best_fitness,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.raw.load_state_dict(state["model"])
        if self.ema and state.get("ema") is not None:
            self.ema.ema.load_state_dict(state["ema"])
            self.ema.updates = state["ema_updates"]
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.scaler.load_state_dict(state["scaler"])
        self.epoch, self.step, self.best_fitness = state["epoch"], state["step"], state["best_fitness"]


@dataclass(frozen=True)
class StepContext:
    plan: RunPlan
    train: TrainConfig
    device: torch.device
    amp_dtype: torch.dtype | None
    warmup_steps: int
    log_every_steps: int


def optimizer_step(s: TrainState, ctx: StepContext) -> None:
    s.scaler.unscale_(s.optimizer)
    torch.nn.utils.clip_grad_norm_(s.raw.parameters(), max_norm=ctx.train.grad_clip)
    s.scaler.step(s.optimizer)
    s.scaler.update()
    s.optimizer.zero_grad(set_to_none=True)
    s.step += 1
    s.scheduler.step()
    warmup_momentum(s.optimizer, s.step, ctx.warmup_steps, ctx.train)
    if s.ema is not None:
        s.ema.update(s.raw)


def train_one_epoch(s: TrainState, batches: Iterator[dict], ctx: StepContext, writer: NullWriter) -> dict[str, float]:
    """One epoch from `batches`, a run-long stream (the loader prefetches across epoch boundaries)."""
    plan, device = ctx.plan, ctx.device
    s.model.train()
    micro_steps = plan.steps_per_epoch * plan.accumulate  # the same on every rank: no one waits at the end
    autocast = torch.autocast(device.type, dtype=ctx.amp_dtype) if ctx.amp_dtype else nullcontext()
    loss_sum = torch.zeros(len(LOSS_NAMES), device=device)
    images, t0 = 0, time.perf_counter()
    bar = writer.progress(itertools.islice(batches, micro_steps), total=micro_steps,
                          desc=f"epoch {s.epoch + 1}/{plan.epochs}")
    for i, batch in enumerate(bar):
        final_micro_step = (i + 1) % plan.accumulate == 0
        img = batch["img"].to(device, non_blocking=True).float() / 255
        targets = {k: batch[k].to(device, non_blocking=True) for k in ("batch_idx", "cls", "bboxes")}
        sync = nullcontext() if final_micro_step or not isinstance(s.model, DDP) else s.model.no_sync()
        with sync:
            with autocast:
                loss, items = s.criterion(s.model(img), targets)
            s.scaler.scale(loss.sum() * plan.world_size).backward()
        loss_sum += torch.stack([items[k] for k in items])[: len(LOSS_NAMES)].detach()
        images += len(img)
        if final_micro_step:
            optimizer_step(s, ctx)
            if s.step % ctx.log_every_steps == 0:  # same step on every rank: the mean is a collective
                mean = dist.all_reduce_mean(loss_sum / (i + 1)).tolist()
                writer.update_progress(bar, {**dict(zip(LOSS_NAMES, mean, strict=True)),
                                             "lr": s.optimizer.param_groups[0]["lr"],
                                             "img/s": images * plan.world_size / (time.perf_counter() - t0),
                                             **_memory()})
    elapsed = time.perf_counter() - t0
    mean = dist.all_reduce_mean(loss_sum / max(micro_steps, 1)).tolist()
    return {**dict(zip(LOSS_NAMES, mean, strict=True)), "img_per_s": images * plan.world_size / elapsed, "epoch_time_s": elapsed,
            "lr": s.optimizer.param_groups[0]["lr"]}


def _memory() -> dict[str, str]:
    if torch.cuda.is_available():
        return {"mem": f"{torch.cuda.max_memory_allocated() / 2**30:.2f}G"}
    return {}
