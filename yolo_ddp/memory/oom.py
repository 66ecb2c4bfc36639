"""Surviving a CUDA out-of-memory error mid-run: every rank learns of it, and the step is redone smaller.

What counts as out of memory is `is_out_of_memory`: torch.OutOfMemoryError (the caching allocator), and the
allocation failures of the libraries under it, which torch raises as RuntimeError (cuDNN, cuBLAS, a CUDA runtime
call: AcceleratorError) or DistBackendError (NCCL), told apart by the status names those libraries document.

The flag travels over a gloo group on the host (the job's own group on CPU, a separate one beside NCCL with
the job's `dist.timeout_s`), so checking it never waits for the GPU: an OOM is raised on the host when the
allocator fails, while the kernels before it may still be queued. The ranks check once per optimizer step,
after the final micro-step's forward, before its gradient all-reduce: non-final micro-steps (under
`no_sync()`) issue no collective, so a rank that ran out of memory in one skips the rest of the step and
reports at that check. The same check carries the stop request (yolo_ddp/engine/faults.py) and the
time-based checkpoint (`train.save_every_s`: due on any rank's clock, so on every rank at the same step). On
recovery the current optimizer step is dropped and redone from its first loader batch with each batch cut into
twice as many micro-batches, so the effective batch, the data and the step count stay the same.

A final micro-step's forward arms DDP's reducer on the ranks where it succeeded; when a peer ran out of
memory, every rank completes one zero-loss backward (a failed rank with a one-image forward) so the
reducer is idle before the retry. An OOM inside the final micro-step's backward leaves DDP's gradient
all-reduce half-launched on that rank, and one inside a SyncBatchNorm forward (or any backward under SyncBN)
leaves peers waiting in its all-reduce: no collective can be matched safely after either, and a checkpoint
written then could hold a half-applied step. That rank records the halved split in the run dir
(`oom_split.json`) and fails. The launcher that started the job (launcher/job/spawn.py) sees the fresh record
and starts the job again from `last.pt` (at most `train.oom_restarts` times, and never past one image per
micro-batch); the new workers read the split here (`read_split_hint`), so they continue the same optimizer
steps, only in smaller pieces. Under torchrun the elastic agent's `--max-restarts` does the restarting.
What is redone is the steps since `last.pt`: at most `train.save_every_s` of training.
"""

from __future__ import annotations

import json
import logging
import os
import re
import threading
import time
from pathlib import Path
from typing import Any

import torch
import torch.distributed as tdist

from yolo_ddp import dist

log = logging.getLogger(__name__)
HINT_FILE = "oom_split.json"

# Allocation failures torch raises as RuntimeError, by the status names cuDNN and cuBLAS document (torch writes
# "cuDNN error: <status>" and "CUDA error: <status> when calling ..."; cuDNN 9 renamed ALLOC_FAILED, kept as an
# alias of the host one).
LIBRARY_OOM_STATUSES = ("CUDNN_STATUS_ALLOC_FAILED", "CUDNN_STATUS_INTERNAL_ERROR_DEVICE_ALLOCATION_FAILED",
                        "CUDNN_STATUS_INTERNAL_ERROR_HOST_ALLOCATION_FAILED", "CUBLAS_STATUS_ALLOC_FAILED")
# NCCL: a failed cudaMalloc/cuMemCreate returns ncclUnhandledCudaError, and its last error carries CUDA's own
# text, "Cuda failure 2 'out of memory'" (older NCCL: without the number); torch raises it
# as DistBackendError: "NCCL error in: ..., unhandled cuda error ...\nncclUnhandledCudaError: Call to CUDA
# function failed.\nLast error:\nCuda failure 2 'out of memory'". Any other NCCL error is no OOM.
NCCL_CUDA_OOM = re.compile(r"ncclUnhandledCudaError\b.*Cuda failure (?:2 )?'out of memory'", re.DOTALL)
CUDA_ERROR_MEMORY_ALLOCATION = 2  # cudaErrorMemoryAllocation (hipErrorOutOfMemory): AcceleratorError.error_code


def is_out_of_memory(err: BaseException) -> bool:
    """The one test for a device allocation failure that a smaller micro-batch can avoid.

    DALI's allocator fails with its own messages and a fixed pipeline batch (yolo_ddp/memory/dali_buffers.py).
    """
    if isinstance(err, torch.OutOfMemoryError):
        return True
    if isinstance(err, torch.AcceleratorError):  # a CUDA runtime call outside the caching allocator
        return getattr(err, "error_code", None) == CUDA_ERROR_MEMORY_ALLOCATION
    if not isinstance(err, RuntimeError):  # DistBackendError is one
        return False
    text = str(err)
    return any(status in text for status in LIBRARY_OOM_STATUSES) or bool(NCCL_CUDA_OOM.search(text))


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
                 timeout_s: float = 600.0, save_every_s: float = 0.0) -> None:
        self.run_dir, self.retries, self.splits, self.used = run_dir, retries, splits, 0
        self.stop, self.stopping = stop, False  # `stopping`: some rank's stop request, agreed on every rank
        self.save_every_s, self.saved_at = save_every_s, time.monotonic()
        self.save_due = False  # `train.save_every_s` elapsed on some rank, agreed on every rank
        self.deadline: float | None = None  # time.monotonic() at which train.time runs out
        self.time_up = False  # some rank's clock passed the deadline, agreed on every rank
        self.group = dist.host_group(timeout_s)

    def agreed(self, oom: bool) -> bool:
        """True on every rank when any rank hit an OOM since the last check; also updates `stopping`, `save_due`."""
        due = 0 < self.save_every_s <= time.monotonic() - self.saved_at
        late = self.deadline is not None and time.monotonic() > self.deadline
        flags = torch.tensor([int(oom), int(self.stop is not None and self.stop.is_set()), int(due), int(late)],
                             dtype=torch.int32)
        if self.group is not None:
            tdist.all_reduce(flags, op=tdist.ReduceOp.MAX, group=self.group)
        self.stopping = self.stopping or bool(flags[1])
        self.save_due = bool(flags[2])
        self.time_up = self.time_up or bool(flags[3])
        return bool(flags[0])

    def checkpointed(self) -> None:
        """`last.pt` now holds the latest step: the time-based checkpoint clock starts again."""
        self.saved_at, self.save_due = time.monotonic(), False

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
        """OOM inside a collective: record the halved split for the restart (if one image is not reached), fail."""
        halved = self.splits * 2
        if halved > batch_per_rank:
            raise OOMUnrecoverable(
                f"Out of memory at optimizer step {step} inside {where}, and the micro-batch is already "
                f"{max(1, batch_per_rank // self.splits)} image(s). Lower train.batch, data.imgsz or "
                f"train.memory_fraction, or use a smaller model."
            )
        if self.run_dir is not None:  # atomic: the launcher and a restarted rank never read half a file
            tmp = self.run_dir / f".{HINT_FILE}.{os.getpid()}"
            tmp.write_text(json.dumps({"splits": halved, "step": step}))
            os.replace(tmp, self.run_dir / HINT_FILE)
        raise OOMUnrecoverable(
            f"Out of memory at optimizer step {step} inside {where}, where ranks cannot agree to retry. The halved "
            f"micro-batch ({max(1, batch_per_rank // halved)}) is recorded in {HINT_FILE}: `python -m launcher` "
            f"restarts the job from last.pt with it (train.oom_restarts), torchrun with --max-restarts >= 1; "
            f"otherwise continue with train.resume=true."
        )


def read_split_hint(run_dir: Path) -> int:
    """The micro-batch split an OOM inside a collective recorded for this run dir (1: none)."""
    try:
        return max(1, int(read_hint(run_dir)["splits"]))
    except (OSError, ValueError, KeyError, TypeError):
        return 1


def read_hint(run_dir: Path) -> dict[str, Any]:
    return json.loads((run_dir / HINT_FILE).read_text())


def hint_stamp(run_dir: Path) -> tuple[int, int] | None:
    """When the split record was last written (None: never); a launcher compares it before and after a job."""
    try:
        st = (run_dir / HINT_FILE).stat()
    except OSError:
        return None
    return st.st_mtime_ns, st.st_ino
