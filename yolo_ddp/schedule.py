"""Which loader batches make each optimizer step, and where warmup ends: Ultralytics' rules, as step arithmetic.

Part of the run plan (yolo_ddp.plan derives the warmup and step counts from it); the engine's optimizer
(yolo_ddp.engine.optim) turns the same schedule into LR and momentum values.

Ultralytics' trainer (`engine/trainer.py`, `_do_train`) counts loader batches `ni` over the run and steps the
optimizer when `ni - last_opt_step >= accumulate`. During the `nw` warmup batches
(`nw = round(min(warmup_epochs, epochs - 1) * nb)`, so the last epoch is never warmup) `accumulate` ramps from
1 to its nominal value, every LR moves from its start (biases: `warmup_bias_lr`, others: 0) to `lr0 * lf(epoch)`
and SGD-style momentum from `warmup_momentum` to `momentum`; AdamW's beta1 is left alone. After warmup the LR
is `lr0 * lf(epoch)`: it changes once per epoch, linear or one-cycle cosine toward `lr0 * lrf`.

One documented difference: an epoch here always ends with an optimizer step, which may hold fewer batches than
`accumulate`, where Ultralytics carries the accumulated gradients over the epoch boundary. Every image then
counts in its epoch's weights, and every epoch end is a clean checkpoint with no pending gradients.
"""

from __future__ import annotations

import bisect
import math
from dataclasses import dataclass
from functools import cached_property

import numpy as np


def warmup_batches(warmup_epochs: float, epochs: int, batches_per_epoch: int) -> int:
    """Ultralytics' `_get_warmup_iterations`: warmup leaves at least the final epoch for regular training."""
    capped = min(warmup_epochs, max(epochs - 1, 0))
    return round(capped * batches_per_epoch) if capped > 0 else 0


@dataclass(frozen=True)
class StepSchedule:
    batches_per_epoch: int  # loader batches per rank per epoch (nb)
    accumulate: int  # nominal batches per optimizer step
    warmup_batches: int  # nw
    epochs: int

    def accumulate_at(self, ni: int) -> int:
        nw = self.warmup_batches
        if nw and ni <= nw:
            return max(1, int(np.interp(ni, [0, nw], [1, self.accumulate]).round()))
        return self.accumulate

    def _steps(self, epoch: int) -> tuple[tuple[int, int], ...]:
        """(batches, global index of the last batch) of each optimizer step of `epoch`."""
        first, nb = epoch * self.batches_per_epoch, self.batches_per_epoch
        steps, last = [], first - 1
        for ni in range(first, first + nb):
            if ni - last >= self.accumulate_at(ni):
                steps.append((ni - last, ni))
                last = ni
        if last < first + nb - 1:  # the epoch's remainder is one more, smaller step
            steps.append((first + nb - 1 - last, first + nb - 1))
        return tuple(steps)

    @cached_property
    def _warm_epochs(self) -> int:
        """Epochs touched by warmup; every later epoch has the same regular steps."""
        return min(self.epochs, self.warmup_batches // self.batches_per_epoch + 1) if self.warmup_batches else 0

    @cached_property
    def _warm(self) -> tuple[tuple[tuple[int, int], ...], ...]:
        return tuple(self._steps(e) for e in range(self._warm_epochs))

    @cached_property
    def _starts(self) -> list[int]:
        """Global index of the first optimizer step of each warm epoch, and of the first regular epoch."""
        starts = [0]
        for steps in self._warm:
            starts.append(starts[-1] + len(steps))
        return starts

    @property
    def regular_steps_per_epoch(self) -> int:
        return math.ceil(self.batches_per_epoch / self.accumulate)

    def steps_in_epoch(self, epoch: int) -> list[int]:
        """Loader batches of each optimizer step of `epoch`."""
        if epoch < self._warm_epochs:
            return [n for n, _ in self._warm[epoch]]
        full, rest = divmod(self.batches_per_epoch, self.accumulate)
        return [self.accumulate] * full + ([rest] if rest else [])

    def first_step(self, epoch: int) -> int:
        if epoch <= self._warm_epochs:
            return self._starts[epoch]
        return self._starts[-1] + (epoch - self._warm_epochs) * self.regular_steps_per_epoch

    @property
    def total_steps(self) -> int:
        return self.first_step(self.epochs)

    def epoch_of(self, step: int) -> int:
        if step < self._starts[-1]:
            return bisect.bisect_right(self._starts, step) - 1
        return self._warm_epochs + (step - self._starts[-1]) // self.regular_steps_per_epoch

    def last_batch_of(self, step: int) -> int:
        """Global loader-batch index `ni` at which optimizer step `step` is taken."""
        epoch = self.epoch_of(step)
        counts = self.steps_in_epoch(epoch)
        return epoch * self.batches_per_epoch + sum(counts[: step - self.first_step(epoch) + 1]) - 1

    def batches_before(self, epoch: int, step: int) -> int:
        """Loader batches of `epoch` consumed before optimizer step `step` (a mid-epoch resume point); a step
        count at the epoch's end gives all of them."""
        return sum(self.steps_in_epoch(epoch)[: max(step - self.first_step(epoch), 0)])

    def in_warmup(self, ni: int) -> bool:
        return bool(self.warmup_batches) and ni <= self.warmup_batches

    def warmup_value(self, ni: int, start: float, end: float) -> float:
        return float(np.interp(ni, [0, self.warmup_batches], [start, end]))
