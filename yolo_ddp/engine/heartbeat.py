"""Which rank stopped? Each rank posts its last finished step to the job's rendezvous store, so a collective
timeout can name the rank that went quiet instead of only "timed out".

The store is the process group's own TCPStore (one small `set` per optimizer step); reading it after a
timeout needs no collective, so it still works while a peer is stuck.
"""

from __future__ import annotations

import time

import torch.distributed as tdist
from torch.distributed import distributed_c10d

from yolo_ddp import dist

TIMEOUT_WORDS = ("timed out", "timeout", "connection closed", "connection reset", "broken pipe")


class Heartbeat:
    def __init__(self) -> None:
        self.store = None
        if dist.is_dist():
            try:  # the default group's store; absent in exotic setups, then the report is just less specific
                self.store = distributed_c10d._get_default_store()
            except (RuntimeError, ValueError):
                self.store = None

    def beat(self, step: int) -> None:
        if self.store is not None:
            self.store.set(f"yolo_ddp/heartbeat/{dist.get_rank()}", f"{step} {time.time():.3f}")

    def progress(self) -> list[tuple[int, int, float]]:
        """(last step, rank, seconds since) per rank, laggards first; step -1 where a rank never reported."""
        if self.store is None:
            return []
        now, rows = time.time(), []
        for r in range(dist.get_world_size()):
            try:
                self.store.wait([f"yolo_ddp/heartbeat/{r}"], _short())
                step, at = self.store.get(f"yolo_ddp/heartbeat/{r}").decode().split()
                rows.append((int(step), r, now - float(at)))
            except Exception:  # the store itself may be gone with a dead rank 0
                rows.append((-1, r, float("inf")))
        return sorted(rows)


def _short():
    from datetime import timedelta

    return timedelta(seconds=2)


def is_collective_timeout(error: BaseException) -> bool:
    text = str(error).lower()
    return isinstance(error, (tdist.DistError, RuntimeError)) and any(w in text for w in TIMEOUT_WORDS)


def explain_timeout(error: BaseException, heartbeat: Heartbeat, timeout_s: float, run_dir: str) -> str:
    first = str(error).strip().splitlines()[0][:300] if str(error).strip() else type(error).__name__
    rows = heartbeat.progress()
    if rows:
        behind = [r for s, r, _ in rows if s == rows[0][0]]
        table = "; ".join(f"rank {r}: " + (f"last step {s}, {ago:.0f} s ago" if s >= 0 else "never reported")
                          for s, r, ago in rows)
        who = (f"Behind: rank {', '.join(map(str, behind))} ({table}); it stopped participating (crashed, hung in "
               f"data loading, or paused), see {run_dir}/rank{behind[0]}.log.")
    else:
        who = f"No per-rank progress was recorded; see the other ranks' logs in {run_dir}/rank<N>.log."
    return (
        f"Rank {dist.get_rank()}: a collective (gradient all-reduce, loss mean or barrier) did not complete within "
        f"dist.timeout_s={timeout_s:g} s ({first}). {who} If a step or a validation pass legitimately takes longer, "
        f"raise dist.timeout_s."
    )
