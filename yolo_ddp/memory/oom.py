"""Surviving a CUDA out-of-memory error mid-run: every rank learns of it, and the step is redone smaller.

The flag travels over a gloo group on the host (the job's own group on CPU, a separate one beside NCCL with
the job's `dist.timeout_s`), so checking it never waits for the GPU: an OOM is raised on the host when the
allocator fails, while the kernels before it may still be queued. The ranks check once per optimizer step,
after the final micro-step's forward, before its gradient all-reduce: non-final micro-steps (under
`no_sync()`) issue no collective, so a rank that ran out of memory in one skips the rest of the step and
reports at that check. The same check carries the stop request (yolo_ddp/engine/faults.py). On recovery the current
optimizer step is dropped and redone from its first loader batch with each batch cut into twice as many
micro-batches, so the effective batch, the data and the step count stay the same.

A final micro-step's forward arms DDP's reducer on the ranks where it succeeded; when a peer ran out of
memory, every rank completes one zero-loss backward (a failed rank with a one-image forward) so the
reducer is idle before the retry. An OOM inside the final micro-step's backward leaves DDP's gradient
all-reduce half-launched on that rank, and one inside a SyncBatchNorm forward leaves peers waiting in its
all-reduce: no collective can be matched safely after either. That rank records the halved split in the run dir and fails;
with `launcher.max_restarts > 0` the elastic agent restarts the job, which resumes from `last.pt` with the
recorded split.
"""

from __future__ import annotations

import json
import logging
import threading
from pathlib import Path
from typing import Any

import torch
import torch.distributed as tdist

from yolo_ddp import dist

log = logging.getLogger(__name__)
HINT_FILE = "oom_split.json"


class OOMUnrecoverable(RuntimeError):
    """Retries are used up, or the OOM hit while gradients were being all-reduced."""


def split_batch(batch: dict[str, Any], parts: int) -> list[dict[str, Any]]:
    """Cut a collated batch into `parts` contiguous micro-batches (labels follow their images)."""
    n = len(batch["img"])
    if parts <= 1:
        return [batch]
    bounds = [round(n * k / parts) for k in range(parts + 1)]
    out = []
    for a, b in zip(bounds, bounds[1:], strict=False):
        if a == b:
            continue
        keep = (batch["batch_idx"] >= a) & (batch["batch_idx"] < b)
        part = {"img": batch["img"][a:b], "batch_idx": batch["batch_idx"][keep] - a,
                "cls": batch["cls"][keep], "bboxes": batch["bboxes"][keep]}
        out.append(part)
    return out


class OOMGuard:
    def __init__(self, run_dir: Path | None, retries: int, splits: int = 1, stop: threading.Event | None = None,
                 timeout_s: float = 600.0) -> None:
        self.run_dir, self.retries, self.splits, self.used = run_dir, retries, splits, 0
        self.stop, self.stopping = stop, False  # `stopping`: some rank's stop request, agreed on every rank
        self.group = dist.host_group(timeout_s)

    def agreed(self, oom: bool) -> bool:
        """True on every rank when any rank hit an OOM since the last check; also updates `stopping`."""
        flags = torch.tensor([int(oom), int(self.stop is not None and self.stop.is_set())], dtype=torch.int32)
        if self.group is not None:
            tdist.all_reduce(flags, op=tdist.ReduceOp.MAX, group=self.group)
        self.stopping = self.stopping or bool(flags[1])
        return bool(flags[0])

    def recover(self, step: int, batch_per_rank: int, where: str) -> None:
        """Free what the failed micro-step held and split batches twice as finely; identical on every rank."""
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
        before = self.splits
        self.used += 1
        if self.used > self.retries or before * 2 > batch_per_rank:
            raise OOMUnrecoverable(
                f"Out of memory at optimizer step {step} ({where}) after {self.used - 1} recoveries; the micro-batch "
                f"is already {max(1, batch_per_rank // before)} image(s). Lower train.batch, data.imgsz or "
                f"train.memory_fraction, use a smaller model, or allow more with train.oom_retries."
            )
        self.splits = before * 2
        if dist.get_rank() == 0:
            log.warning(
                "OOM at optimizer step %d (%s) on some rank: redoing the step with micro-batch %d -> %d and twice "
                "the accumulation; effective batch and step count unchanged (recovery %d of %d)",
                step, where, -(-batch_per_rank // before), -(-batch_per_rank // self.splits), self.used, self.retries)

    def refuse_if_collective_forward(self, collective_forward: bool, step: int, batch_per_rank: int) -> None:
        """SyncBatchNorm all-reduces inside the forward: peers wait there, not at the flag, so fail instead."""
        if collective_forward:
            self.fail_in_sync(step, batch_per_rank, where="a SyncBatchNorm forward")

    def fail_in_sync(self, step: int, batch_per_rank: int, where: str = "the gradient all-reduce's backward") -> None:
        """OOM inside a collective: record the halved split for the restart, then fail."""
        if self.run_dir is not None:
            (self.run_dir / HINT_FILE).write_text(json.dumps({"splits": self.splits * 2, "step": step}))
        raise OOMUnrecoverable(
            f"Out of memory at optimizer step {step} inside {where}, where ranks cannot agree to retry. The halved micro-batch ({max(1, batch_per_rank // (self.splits * 2))}) is recorded in "
            f"{HINT_FILE}: with launcher.max_restarts >= 1 the job restarts from last.pt with it; otherwise resume "
            f"with train.resume=true."
        )


def read_split_hint(run_dir: Path) -> int:
    path = run_dir / HINT_FILE
    try:
        return max(1, int(json.loads(path.read_text())["splits"]))
    except (OSError, ValueError, KeyError, TypeError):
        return 1
