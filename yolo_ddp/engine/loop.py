"""The training step and epoch: DDP, AMP and gradient accumulation readable in one screen.

Loss semantics follow Ultralytics: its criterion returns the loss times the local batch; DDP averages
gradients over ranks, so multiplying by world size sums them. `LossNormaliser` (yolo_ddp/engine/loss_norm.py) gives
the step one normaliser, so the update equals one forward on all of the step's images, however they are split
over ranks and micro-batches. Non-final micro-steps run under `no_sync()`: one all-reduce per optimizer step, and one small host-side check
(OOM and stop flags, yolo_ddp/memory/oom.py) before it.
Which batches form a step, and each step's LR and momentum, come from `yolo_ddp.schedule` (Ultralytics' rules).
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Callable, Iterator
from contextlib import nullcontext
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch.nn.parallel import DistributedDataParallel as DDP
from torch.optim.optimizer import _get_scalar_dtype  # the dtype torch's own optimizers give `step`

from yolo_ddp import dist
from yolo_ddp.config import TrainConfig
from yolo_ddp.data.model_input import to_model_input
from yolo_ddp.engine.loss_norm import LossNormaliser
from yolo_ddp.engine.optim import set_step_momentum
from yolo_ddp.engine.sync_bn import has_collective_norm
from yolo_ddp.logging import NullWriter, StepWindow, peak_memory_gib
from yolo_ddp.memory.oom import OOMGuard, is_out_of_memory, split_batch
from yolo_ddp.memory.run import STRIDE
from yolo_ddp.plan import RunPlan
from yolo_ddp.schedule import StepSchedule
from yolo_ddp.sync.ddp import forward_alone, restart_step

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
    forward: torch.nn.Module | None = None  # what the step calls: `model` (the default), or torch.compile's wrapper
    norm: LossNormaliser | None = None  # None: the criterion's own per-forward normalisation
    epoch: int = 0  # completed epochs
    step: int = 0  # completed optimizer steps
    best_fitness: float = float("-inf")
    stopper: Any = None  # ultralytics EarlyStopping (train.patience)
    extra: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.forward is None:
            self.forward = self.model

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
            # as Ultralytics' checkpoints hold it, so a resumed run counts patience from the same best epoch
            "stopper": {"best_fitness": self.stopper.best_fitness, "best_epoch": self.stopper.best_epoch}
            if self.stopper else None,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.raw.load_state_dict(state["model"])
        if self.ema and state.get("ema") is not None:
            self.ema.ema.load_state_dict(state["ema"])
            self.ema.updates = state["ema_updates"]
        load_optimizer_state(self.optimizer, state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.scaler.load_state_dict(state["scaler"])
        self.epoch, self.step, self.best_fitness = state["epoch"], state["step"], state["best_fitness"]
        if self.stopper is not None:
            self.stopper.__dict__.update(state.get("stopper") or {})  # older checkpoints keep a fresh stopper


def load_optimizer_state(optimizer: torch.optim.Optimizer, state: dict[str, Any]) -> None:
    """Load a checkpoint's optimizer state but keep this run's kernel choice (train.fused_optimizer).

    torch restores each param group's `fused`/`foreach` flags from the checkpoint, while GradScaler
    decides from the constructor whether the step skips infs itself; a mismatch would apply fp16 inf steps.
    """
    kernels = [{k: g[k] for k in ("fused", "foreach") if k in g} for g in optimizer.param_groups]
    # Load under this run's flags: torch places each `step` by them (on the parameter's device when fused).
    groups = [{**saved, **kernel} for saved, kernel in zip(state["param_groups"], kernels, strict=True)]
    optimizer.load_state_dict({**state, "param_groups": groups})
    place_step_state(optimizer)


def place_step_state(optimizer: torch.optim.Optimizer) -> None:
    """Put each parameter's `step` where this run's kernel reads it, as torch's `_init_group` creates it.

    torch's `load_state_dict` moves `step` to the parameter's device for a fused group but leaves it where the
    checkpoint had it otherwise; a non-fused kernel handed a GPU `step` reads it back with one `.item()` per
    parameter per step. (Loaded by the checkpoint's own flags, a fused run's `step` would stay on the CPU and
    the fused kernel fail on a device mismatch; `load_optimizer_state` avoids that.)
    """
    for group in optimizer.param_groups:
        on_device = bool(group.get("fused") or group.get("capturable"))
        dtype = _get_scalar_dtype(is_fused=group.get("fused"))
        for p in group["params"]:
            state = optimizer.state.get(p)
            if state and torch.is_tensor(state.get("step")):
                state["step"] = state["step"].to(device=p.device if on_device else "cpu", dtype=dtype)


@dataclass(frozen=True)
class StepContext:
    plan: RunPlan
    train: TrainConfig
    device: torch.device
    amp_dtype: torch.dtype | None
    log_every_steps: int

    @property
    def schedule(self) -> StepSchedule:
        return self.plan.schedule


def optimizer_step(s: TrainState, ctx: StepContext, grad_factor: torch.Tensor | None = None) -> None:
    s.scaler.unscale_(s.optimizer)
    if grad_factor is not None:  # the step's one loss normaliser (yolo_ddp/engine/loss_norm.py), before clipping
        torch._foreach_mul_([p.grad for p in s.raw.parameters() if p.grad is not None], grad_factor)
    torch.nn.utils.clip_grad_norm_(s.raw.parameters(), max_norm=ctx.train.grad_clip)
    s.scaler.step(s.optimizer)
    s.scaler.update()
    s.optimizer.zero_grad(set_to_none=True)
    s.step += 1
    s.scheduler.step()
    if s.ema is not None:
        s.ema.update(s.raw)


def forward_backward(s: TrainState, batches: list[dict], ctx: StepContext,
                     guard: OOMGuard) -> tuple[torch.Tensor, torch.Tensor | None] | None:
    """Accumulate one optimizer step's gradients over `batches`, each cut into `guard.splits` micro-batches.

    Returns the summed loss items and the gradient factor of the step's loss normaliser, or None when some rank
    ran out of memory (every rank returns None then; see yolo_ddp/memory/oom.py for where the ranks agree and why).
    """
    device, world, ddp = ctx.device, ctx.plan.world_size, isinstance(s.model, DDP)
    collective_norm = ddp and has_collective_norm(s.raw)  # SyncBatchNorm: forward and backward all-reduce
    autocast = torch.autocast(device.type, dtype=ctx.amp_dtype) if ctx.amp_dtype else nullcontext()
    micro = [m for b in batches for m in split_batch(b, guard.splits)]
    step_images = sum(len(b["img"]) for b in batches) * world  # every rank's step holds as many (padded shards)
    if s.norm is not None:
        s.norm.begin_step()
    loss_sum = torch.zeros(len(LOSS_NAMES), device=device)
    oom = False  # this rank ran out of memory earlier in the step; the ranks learn it at the step's one check
    for i, mb in enumerate(micro):
        final = i == len(micro) - 1  # only the last micro-step all-reduces gradients
        if oom and not final:
            continue  # the step is redone anyway, and non-final micro-steps issue no collective
        img = resize_for_step(to_model_input(mb["img"], device, ctx.amp_dtype), ctx, s)
        targets = {k: mb[k].to(device, non_blocking=True) for k in ("batch_idx", "cls", "bboxes")}
        with nullcontext() if final or not ddp else s.model.no_sync():
            loss = items = None
            if not oom:
                try:
                    with autocast:
                        loss, items = s.criterion(s.forward(img), targets)
                    if s.norm is not None:
                        loss = s.norm.micro_loss(loss, len(img), step_images)
                except RuntimeError as e:  # torch.OutOfMemoryError, or a cuDNN/cuBLAS/NCCL allocation failure
                    if not is_out_of_memory(e):
                        raise
                    guard.refuse_if_collective_forward(collective_norm, s.step, ctx.plan.batch_per_rank)
            if final and guard.agreed(loss is None):  # the step's one host check; no gradient all-reduce yet
                if ddp:  # this forward armed DDP's reducer: every rank must finish one backward
                    drain_reducer(s.model, loss, img)
                    restart_step(s.model)
                return None
            if loss is None:
                oom = True
                continue
            try:
                s.scaler.scale(loss.sum() * world).backward()
            except RuntimeError as e:
                if not is_out_of_memory(e):
                    raise
                if (final and ddp) or collective_norm:  # peers wait inside an all-reduce this rank left
                    guard.fail_in_sync(s.step, ctx.plan.batch_per_rank)
                if final:  # one process: nothing in flight, redo the step
                    return None
                oom = True
                continue
        loss_sum += torch.stack([items[k] for k in items])[: len(LOSS_NAMES)].detach()
    factor = s.norm.finish_step() if s.norm is not None else None
    return loss_sum / len(micro) * len(batches), factor  # items: mean per loader batch, whatever the split


def drain_reducer(model: DDP, loss: torch.Tensor | None, img: torch.Tensor) -> None:
    """Complete the armed synchronising backward with zero gradients, so DDP's reducer is idle again.

    A rank whose forward succeeded back-propagates its loss times zero; a rank that ran out of memory joins
    with a one-image 64 px forward, which broadcasts no buffers (its peers run no forward). All ranks all-reduce
    the same buckets; the step's gradients are dropped after.
    """
    if loss is None:
        with forward_alone(model):
            out = model(torch.zeros(1, *img.shape[1:2], 64, 64, device=img.device))  # 64: BN needs >1 value at P5
        loss = sum(t.float().sum() for t in _tensors(out))
    (loss.sum() * 0).backward()


def _tensors(out) -> list[torch.Tensor]:
    if isinstance(out, torch.Tensor):
        return [out]
    items = out.values() if isinstance(out, dict) else out
    return [t for x in items for t in _tensors(x)]


def train_one_epoch(s: TrainState, batches: Iterator[dict], ctx: StepContext, writer: NullWriter,
                    guard: OOMGuard, after_step: Callable[[TrainState], bool] | None = None) -> dict[str, float]:
    """One epoch from `batches`, a run-long stream (the loader prefetches across epoch boundaries).

    Starts after the steps a mid-epoch checkpoint already holds. `after_step` (periodic checkpoints, stop
    requests) runs after every optimizer step on every rank; when it returns True the epoch ends early
    and the result says `stopped`.
    """
    plan, schedule = ctx.plan, ctx.schedule
    s.model.train()
    counts = schedule.steps_in_epoch(s.epoch)  # loader batches of each optimizer step
    first = s.step - schedule.first_step(s.epoch)  # > 0 only when resuming from a mid-epoch checkpoint
    loss_sum = torch.zeros(len(LOSS_NAMES), device=ctx.device)
    images, t0, window, stopped, done = 0, time.perf_counter(), StepWindow(), False, 0
    bar = writer.progress(range(first, len(counts)), total=len(counts) - first,
                          desc=f"epoch {s.epoch + 1}/{plan.epochs}")
    for n in bar:
        step_batches = list(itertools.islice(batches, counts[n]))  # kept until the step succeeds
        window.data_ready(sum(len(b["img"]) for b in step_batches))
        set_step_momentum(s.optimizer, schedule, s.step, ctx.train)
        while (result := forward_backward(s, step_batches, ctx, guard)) is None:
            s.optimizer.zero_grad(set_to_none=True)  # drop the partial step's gradients
            guard.recover(s.step, plan.batch_per_rank, "forward/backward")
        items, grad_factor = result
        optimizer_step(s, ctx, grad_factor)
        window.step_done()
        loss_sum += items
        images += sum(len(b["img"]) for b in step_batches)
        done += counts[n]
        if s.step % ctx.log_every_steps == 0:  # same step on every rank: the mean is a collective
            mean = dist.all_reduce_mean(loss_sum / done).tolist()
            writer.update_progress(bar, {**dict(zip(LOSS_NAMES, mean, strict=True)),
                                         "lr": s.optimizer.param_groups[0]["lr"],
                                         "img/s": images * plan.world_size / (time.perf_counter() - t0),
                                         **_memory()})
            writer.step_row(s.step, {**dict(zip(LOSS_NAMES, mean, strict=True)), "lr": s.optimizer.param_groups[0]["lr"],
                                     "amp_scale": s.scaler.get_scale(), "epoch": s.epoch + (n + 1) / len(counts)},
                            dist.gather_objects(window.collect(ctx.device)))  # per-rank stats, to rank 0
        if after_step is not None and after_step(s):
            stopped = True
            break
    elapsed = time.perf_counter() - t0
    peak = dist.all_reduce_max(torch.tensor([peak_memory_gib(ctx.device)], device=ctx.device)).item()
    mean = dist.all_reduce_mean(loss_sum / max(done, 1)).tolist()
    return {**dict(zip(LOSS_NAMES, mean, strict=True)), "img_per_s": images * plan.world_size / elapsed,
            "stopped": stopped,
            "epoch_time_s": elapsed, "lr": s.optimizer.param_groups[0]["lr"], "micro_batch_splits": guard.splits,
            "peak_mem_gib": peak}


def resize_for_step(img: torch.Tensor, ctx: StepContext, s: TrainState) -> torch.Tensor:
    """Progressive resize (`train.imgsz_schedule`) and multi-scale (`train.multi_scale`), as Ultralytics does it:
    resize the letterboxed batch; boxes are normalized, so they need no change. The size is drawn from
    (seed, step), so every rank and every micro-batch of a step gets the same one without talking."""
    size = img.shape[-1]
    schedule = [imgsz for first, imgsz in sorted(ctx.train.imgsz_schedule) if first <= s.epoch]
    if schedule:
        size = schedule[-1]
    if ctx.train.multi_scale:
        lo, hi = ctx.train.multi_scale
        g = torch.Generator().manual_seed(ctx.train.seed * 1_000_003 + s.step)
        factor = lo + (hi - lo) * torch.rand(1, generator=g).item()
        size = max(STRIDE, int(size * factor) // STRIDE * STRIDE)
    if size == img.shape[-1]:
        return img
    return F.interpolate(img, size=(size, size), mode="bilinear", align_corners=False)


def _memory() -> dict[str, str]:
    if torch.cuda.is_available():
        return {"mem": f"{torch.cuda.max_memory_allocated() / 2**30:.2f}G"}
    return {}
