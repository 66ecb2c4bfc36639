"""Stopping cleanly and losing little: signal handling, mid-epoch checkpoints, hang reports.

- SIGTERM / SIGINT (Ctrl-C, a scheduler's preemption) only set a flag. The ranks agree on it in the optimizer
  step's one host-side check (with the OOM flag, yolo_ddp/memory/oom.py); after that step rank 0 writes
  `last.pt`, and every rank exits with 128 + the signal number; `train.resume=true` continues from that step.
- `train.save_every_s` (default 120) writes `last.pt` inside an epoch once that long has passed since the last
  checkpoint, and `train.save_every_steps` every N optimizer steps; each after a barrier proves every rank
  finished that step, so a crash (or an OOM restart, yolo_ddp/memory/oom.py) redoes at most that much and
  never resumes from a checkpoint claiming work some rank had not done. The time is agreed in the step's host
  check, so every rank saves after the same step.
"""

from __future__ import annotations

import logging
import signal
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from yolo_ddp import dist
from yolo_ddp.engine.heartbeat import Heartbeat
from yolo_ddp.engine.loop import TrainState
from yolo_ddp.memory.oom import OOMGuard
from yolo_ddp.schedule import StepSchedule

log = logging.getLogger(__name__)


class StopRequested(SystemExit):
    """Raised after the checkpoint is written; its code is 128 + the signal, as a shell reports it."""


class StopSignal:
    def __init__(self) -> None:
        self.event, self.signum = threading.Event(), 0

    def __call__(self, signum: int, frame) -> None:
        if not self.event.is_set():
            log.warning("received %s: stopping after the current optimizer step and writing last.pt",
                        signal.Signals(signum).name)
        self.signum = self.signum or signum
        self.event.set()


@contextmanager
def stop_on_signals() -> Iterator[StopSignal]:
    stop = StopSignal()
    previous = {s: signal.signal(s, stop) for s in (signal.SIGTERM, signal.SIGINT)}
    try:
        yield stop
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)


def after_step_hook(stop: StopSignal, guard: OOMGuard, heartbeat: Heartbeat, save_every_steps: int,
                    schedule: StepSchedule, save: Callable[[], None]) -> Callable[[TrainState], bool]:
    """What every rank runs after each optimizer step; True ends the epoch (and the run) early."""

    def after_step(state: TrainState) -> bool:
        heartbeat.beat(state.step)  # a store write, no collective
        stopping = guard.stopping  # agreed at this step's host check (OOMGuard), the same on every rank
        # The epoch loop checkpoints epoch ends itself.
        end_of_epoch = schedule.first_step(schedule.epoch_of(state.step)) == state.step
        every_n = save_every_steps > 0 and state.step % save_every_steps == 0
        periodic = (guard.save_due or every_n) and not end_of_epoch  # save_due: train.save_every_s
        if stopping or periodic:
            dist.barrier(guard.group)  # every rank finished this step before rank 0 records it; host-side
            if dist.get_rank() == 0:
                save()
        if stopping or periodic or end_of_epoch:
            guard.checkpointed()  # the time-based clock restarts on every rank
        return stopping or guard.time_up  # train.time: the epoch loop validates and saves, then ends the run

    return after_step
