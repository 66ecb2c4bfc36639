"""What each rank measures between two log points, gathered to rank 0 by the loop.

Data wait is the time from the end of one optimizer step to the arrival of the next step's batches; step
time is the wall time per optimizer step over the window (the loss read-back at each log point syncs CUDA, so the
window's total is exact even though single kernels run asynchronously).
"""

from __future__ import annotations

import resource
import sys
import time

import torch


def peak_memory_gib(device: torch.device) -> float:
    """Peak memory of this rank: the CUDA caching allocator's high-water mark, else the process's peak RSS."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**30
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux, bytes on macOS
    return rss / (2**30 if sys.platform == "darwin" else 2**20)


class StepWindow:
    """Images, data wait and optimizer steps of one rank since the last `collect()` (which restarts the window)."""

    def __init__(self) -> None:
        self._reset(time.perf_counter())

    def _reset(self, now: float) -> None:
        self.start = self.mark = now
        self.wait_s, self.images, self.steps = 0.0, 0, 0

    def data_ready(self, images: int) -> None:
        """The step's batches arrived: the time since the last step ended was spent waiting for data."""
        self.wait_s += time.perf_counter() - self.mark
        self.images += images

    def step_done(self) -> None:
        self.steps += 1
        self.mark = time.perf_counter()

    def collect(self, device: torch.device) -> dict[str, float]:
        now = time.perf_counter()
        elapsed, steps = max(now - self.start, 1e-9), max(self.steps, 1)
        stats = {"img_per_s": self.images / elapsed, "data_wait_ms": 1e3 * self.wait_s / steps,
                 "step_ms": 1e3 * elapsed / steps, "peak_mem_gib": peak_memory_gib(device)}
        self._reset(now)
        return stats
