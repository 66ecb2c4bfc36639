"""The optimizer and its LR/momentum schedule, as the installed Ultralytics builds them.

The choice (`train.optimizer=auto`) and the param groups are Ultralytics' own: `choose_optimizer` applies the
rule of `BaseTrainer.build_optimizer`, and `build_optimizer` calls that method itself, so groups (decayed
weights, norm weights, biases; Muon matrices for MuSGD, with its 3x LR on the class head) and optimizer classes
are exactly `yolo train`'s. The LR follows `yolo_ddp.schedule` (per batch in warmup, per epoch after), driven
by a torch `LambdaLR` stepped once per optimizer step.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from types import SimpleNamespace

import torch
from torch import nn
from ultralytics.engine.trainer import BaseTrainer
from ultralytics.utils.torch_utils import one_cycle

from yolo_ddp.config import TrainConfig
from yolo_ddp.schedule import StepSchedule

FUSABLE = ("SGD", "Adam", "AdamW")  # torch optimizers with a fused kernel on CPU and CUDA
KERNEL_KEYS = ("fused", "foreach")


@dataclass(frozen=True)
class OptimizerChoice:
    name: str
    lr0: float
    momentum: float
    warmup_bias_lr: float = 0.1  # where bias LRs start their warmup; Ultralytics zeroes it for `auto`


def lr_lambda(epochs: int, lrf: float, cos: bool):
    """Ultralytics' `_setup_scheduler` factor of lr0 per epoch."""
    if cos:
        return one_cycle(1, lrf, epochs)
    return lambda x: max(1 - x / epochs, 0) * (1.0 - lrf) + lrf


def auto_iterations(train_images: int, global_batch: int, nbs: int, epochs: int) -> int:
    """The iteration count Ultralytics' `optimizer=auto` decides on (`_build_train_pipeline`)."""
    return math.ceil(train_images / max(global_batch, nbs)) * epochs


def choose_optimizer(train: TrainConfig, nc: int, iterations: int) -> OptimizerChoice:
    """`auto` is Ultralytics 8.4's rule: MuSGD (lr 0.01, momentum 0.9) above 10k iterations, else AdamW with
    lr fitted to the class count; either way bias warmup starts at 0. A named optimizer keeps every value."""
    if train.optimizer != "auto":
        return OptimizerChoice(train.optimizer, train.lr0, train.momentum, train.warmup_bias_lr)
    if iterations > 10_000:
        return OptimizerChoice("MuSGD", 0.01, 0.9, 0.0)
    return OptimizerChoice("AdamW", round(0.002 * 5 / (4 + nc), 6), 0.9, 0.0)


def build_optimizer(model: nn.Module, choice: OptimizerChoice, weight_decay: float,
                    fused: bool = True) -> torch.optim.Optimizer:
    """Ultralytics' param groups and optimizer class; `fused`: one kernel for the whole update on CPU and CUDA
    (2-2.7x faster than torch's default on CPU), for the torch optimizers that have one."""
    trainer = SimpleNamespace(args=SimpleNamespace(optimizer=choice.name, lr0=choice.lr0,
                                                   warmup_bias_lr=choice.warmup_bias_lr), data={})
    optimizer = BaseTrainer.build_optimizer(trainer, model, name=choice.name, lr=choice.lr0,
                                            momentum=choice.momentum, decay=weight_decay)
    if not fused or choice.name not in FUSABLE or optimizer.param_groups[0].get("fused"):
        return optimizer
    # fused=True must reach the constructor: that is where GradScaler learns the step skips infs itself.
    groups = [{k: v for k, v in g.items() if k not in KERNEL_KEYS} for g in optimizer.param_groups]
    return type(optimizer)(groups, fused=True)


def build_scheduler(optimizer: torch.optim.Optimizer, train: TrainConfig, choice: OptimizerChoice,
                    schedule: StepSchedule) -> torch.optim.lr_scheduler.LambdaLR:
    """LR of optimizer step `s` (LambdaLR's counter): Ultralytics' value at the loader batch that takes it."""
    lf = lr_lambda(schedule.epochs, train.lrf, train.cos_lr)
    last = max(schedule.total_steps - 1, 0)

    def make(start_lr: float, initial_lr: float):
        start = start_lr / initial_lr

        def factor(step: int) -> float:
            step = min(step, last)  # the scheduler is stepped once more after the final step
            target = lf(schedule.epoch_of(step))
            ni = schedule.last_batch_of(step)
            return schedule.warmup_value(ni, start, target) if schedule.in_warmup(ni) else target

        return factor

    lambdas = [make(choice.warmup_bias_lr if g.get("param_group") == "bias" else 0.0, g["lr"])
               for g in optimizer.param_groups]
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambdas)


def rebuild_scheduler(optimizer: torch.optim.Optimizer, step: int, train: TrainConfig, choice: OptimizerChoice,
                      schedule: StepSchedule) -> torch.optim.lr_scheduler.LambdaLR:
    """The LR schedule of a re-planned run (train.time changed its epochs), positioned at optimizer step `step`:
    the next step's LR is the new schedule's. The groups keep their `initial_lr`."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # "scheduler.step() before optimizer.step()": a new scheduler
        scheduler = build_scheduler(optimizer, train, choice, schedule)
        scheduler.last_epoch = step - 1
        scheduler.step()
    return scheduler


def set_step_momentum(optimizer: torch.optim.Optimizer, schedule: StepSchedule, step: int,
                      train: TrainConfig) -> None:
    """SGD-style momentum rises from warmup_momentum to train.momentum during warmup, as Ultralytics sets it per
    batch (groups with a `momentum` key only: AdamW's beta1 stays as built)."""
    ni = schedule.last_batch_of(step)
    if not schedule.in_warmup(ni):
        return
    value = schedule.warmup_value(ni, train.warmup_momentum, train.momentum)
    for group in optimizer.param_groups:
        if "momentum" in group:
            group["momentum"] = value
