"""Which rank stopped? Each rank posts its last finished step to the job's rendezvous store (one small `set` per
optimizer step, with its host and pid), and two readers name the rank that went quiet:

- `explain_timeout`, when a collective times out in Python (the step's host check on its gloo group, or any
  collective under gloo). Reading the store needs no collective, so it works while a peer is stuck.
- `StallMonitor`, a daemon thread on each node's local rank 0 (`Heartbeat.watch`). On GPUs the main thread may
  never see a timeout: the loss blocks the host on a CUDA stream that waits for the previous step's NCCL
  all-reduce, and NCCL's watchdog ends the process dist.timeout_s + 60 s after it started, without a Python
  exception. The thread reads every heartbeat over its own store connection every `poll_s` (dist.timeout_s / 20,
  0.2 to 10 s) and, once no rank has finished an optimizer step for `stall_after_s` (dist.timeout_s + at most
  20 s), logs one line naming the ranks behind, before that watchdog; again at twice that quiet time, four
  times, ...; and once more when a step finishes again.

One thread per node, not per rank: one report in each node's log, and store reads that grow with nodes, not
ranks. It runs while the main thread waits in native code that releases the GIL (torch's ops and CUDA syncs,
NCCL waits, sleeps, socket and pipe reads). A native call that hangs holding the GIL stops it too; then another
node's monitor, or NCCL's watchdog, is left. Nothing is watched before the first optimizer step.
"""

from __future__ import annotations

import logging
import os
import socket
import sys
import threading
import time
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path

import torch.distributed as tdist
from torch.distributed import distributed_c10d

from yolo_ddp import dist

log = logging.getLogger(__name__)
PEER_LEFT_WORDS = ("connection closed", "connection reset", "broken pipe")  # a peer's process ended
TIMEOUT_WORDS = ("timed out", "timeout", *PEER_LEFT_WORDS)


def _key(rank: int) -> str:
    return f"yolo_ddp/heartbeat/{rank}"


class Heartbeat:
    def __init__(self) -> None:
        self.store = None
        self.monitor: StallMonitor | None = None
        self.where = f"{socket.gethostname()} {os.getpid()}"
        if dist.is_dist():
            try:  # the default group's store; absent in exotic setups, then the report is just less specific
                self.store = distributed_c10d._get_default_store()
            except (RuntimeError, ValueError):
                self.store = None

    def beat(self, step: int) -> None:
        if self.store is not None:
            self.store.set(_key(dist.get_rank()), f"{step} {time.time():.3f} {self.where}")

    def progress(self) -> list[tuple[int, int, float]]:
        """(last step, rank, seconds since) per rank, laggards first; step -1 where a rank never reported."""
        if self.store is None:
            return []
        now, rows = time.time(), []
        for r in range(dist.get_world_size()):
            try:
                self.store.wait([_key(r)], timedelta(seconds=2))
                step, at = self.store.get(_key(r)).decode().split()[:2]
                rows.append((int(step), r, now - float(at)))
            except Exception:  # the store itself may be gone with a dead rank 0
                rows.append((-1, r, float("inf")))
        return sorted(rows)

    def watch(self, timeout_s: float, run_dir: str) -> None:
        """Start the stall monitor on this node's local rank 0; a no-op elsewhere and without a group."""
        if self.store is None or self.monitor is not None or dist.get_local_rank() != 0:
            return
        try:  # a connection of its own: a store client is not shared between threads
            store = self.store.clone()
            store.set_timeout(timedelta(seconds=max(2.0, poll_s(timeout_s))))
        except (AttributeError, RuntimeError) as e:
            log.info("no stall monitor (%s): a hang inside a CUDA/NCCL wait is reported by NCCL's watchdog only", e)
            return
        self.monitor = StallMonitor(store, dist.get_world_size(), timeout_s, run_dir, rank=dist.get_rank())
        self.monitor.start()

    def close(self) -> None:
        """Stop the monitor (before the process group goes, with its store)."""
        if self.monitor is not None:
            self.monitor.stop()
            self.monitor = None


def poll_s(timeout_s: float) -> float:
    return min(10.0, max(0.2, timeout_s / 20))


def stall_after_s(timeout_s: float) -> float:
    """dist.timeout_s plus a third of NCCL's grace (at most dist.timeout_s again): a host check that timed out in
    Python reports first, and the monitor (with its poll) still speaks before NCCL's watchdog."""
    return timeout_s + min(timeout_s, dist.NCCL_GRACE_S / 3)


class StallMonitor(threading.Thread):
    """Reads every rank's heartbeat and logs when no rank has finished an optimizer step for `after_s`."""

    def __init__(self, store, world: int, timeout_s: float, run_dir: str, rank: int = 0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        super().__init__(name="yolo_ddp-stall-monitor", daemon=True)
        self.store, self.world, self.rank, self.clock = store, world, rank, clock
        self.timeout_s, self.run_dir = timeout_s, run_dir
        self.after_s, self.poll_s = stall_after_s(timeout_s), poll_s(timeout_s)
        self.done = threading.Event()
        self.seen: dict[int, tuple[int, float, str]] = {}  # rank -> (step, when first seen at it, "host pid")
        self.lead, self.moved_at, self.due, self.reported = -1, 0.0, self.after_s, False
        self.failed = False

    def run(self) -> None:
        while not self.done.wait(self.poll_s):
            try:
                self.check(self.read())
            except Exception as e:  # never into the main thread; the store may be gone with rank 0
                if not self.failed:
                    log.info("stall monitor: cannot read the heartbeats (%s); retrying quietly", e)
                self.failed = True

    def stop(self) -> None:
        self.done.set()
        if self.is_alive() and threading.current_thread() is not self:
            self.join(timeout=max(2.0, self.poll_s) + 1)  # at most one store read in flight

    def read(self) -> dict[int, tuple[int, str]]:
        """rank -> (last step, "host pid") for every rank that has posted; store reads that never wait."""
        keys = [_key(r) for r in range(self.world)]
        if self.store.check(keys):
            ranks, values = list(range(self.world)), self.store.multi_get(keys)
        else:  # a rank has not reported yet: read the others one by one
            ranks = [r for r in range(self.world) if self.store.check([keys[r]])]
            values = [self.store.get(keys[r]) for r in ranks]
        out = {}
        for r, value in zip(ranks, values, strict=True):
            step, _, *where = value.decode().split()
            out[r] = (int(step), " ".join(where))
        return out

    def check(self, readings: dict[int, tuple[int, str]]) -> str | None:
        """Update from one read; the message logged, if any."""
        now = self.clock()
        for r, (step, where) in readings.items():
            if r not in self.seen or self.seen[r][0] != step:
                self.seen[r] = (step, now, where)
        if not self.seen:
            return None
        lead = max(step for step, _, _ in self.seen.values())
        if lead != self.lead:
            message = (f"Stall cleared: step {lead} finished after {now - self.moved_at:.0f} s without one."
                       if self.reported else None)
            self.lead, self.moved_at, self.due, self.reported = lead, now, self.after_s, False
            if message:
                log.warning(message)
            return message
        quiet = now - self.moved_at
        if quiet < self.due:
            return None
        self.due, self.reported = 2 * max(quiet, self.due), True
        message = self.describe(quiet, now)
        log.warning(message)
        return message

    def describe(self, quiet: float, now: float) -> str:
        steps = {r: self.seen[r][0] if r in self.seen else -1 for r in range(self.world)}
        low = min(steps.values())
        head = (f"Stall: no rank has finished an optimizer step for {quiet:.0f} s (dist.timeout_s={self.timeout_s:g}; "
                f"on GPUs NCCL's watchdog ends the job at dist.timeout_s + {dist.NCCL_GRACE_S:g} s, without a report).")
        if low == self.lead:
            return (f"{head} Every rank last finished step {low}, so the one that stopped is inside step {low + 1} "
                    f"and the heartbeats cannot tell which: see {self.run_dir}/rank<N>.log, or `py-spy dump --pid` "
                    f"each rank. A validation pass or checkpoint longer than dist.timeout_s looks the same and "
                    f"clears at the next step.{self._main_thread()}")
        behind = [r for r, s in steps.items() if s == low]
        seen = [r for r in behind if r in self.seen and self.seen[r][2]]
        detail = (f"last step {low}, quiet {min(now - self.seen[r][1] for r in behind):.0f} s" if low >= 0
                  else "never reported")
        pids = "; ".join((f"rank {r}: " if len(behind) > 1 else "") + _pid_on_host(self.seen[r][2]) for r in seen[:4])
        return (f"{head} Behind: rank {_ranks(behind)} ({detail}; rank {_ranks([r for r in steps if r not in behind])} "
                f"at step {self.lead}): it stopped taking part (crashed, hung in data loading or a GPU kernel, paused, "
                f"or lost the network) and the others wait for it inside a collective. See "
                f"{self.run_dir}/rank{behind[0]}.log" + (f"; `py-spy dump --pid` shows where it is ({pids})" if pids
                                                         else "") + f".{self._main_thread()}")

    def _main_thread(self) -> str:
        frame = sys._current_frames().get(threading.main_thread().ident)
        if frame is None:
            return ""
        code = frame.f_code
        return f" Rank {self.rank}'s main thread is at {Path(code.co_filename).name}:{frame.f_lineno} ({code.co_name})."


def _pid_on_host(where: str) -> str:
    host, _, pid = where.partition(" ")
    return f"pid {pid} on {host}"


def _ranks(ranks: list[int]) -> str:
    """[0, 2, 3, 4, 7] -> "0, 2-4, 7"."""
    spans: list[list[int]] = []
    for r in sorted(ranks):
        if spans and spans[-1][1] == r - 1:
            spans[-1][1] = r
        else:
            spans.append([r, r])
    return ", ".join(str(a) if a == b else f"{a}-{b}" for a, b in spans)


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
    if any(w in first.lower() for w in PEER_LEFT_WORDS):  # not a timeout: a peer exited mid-collective
        return (
            f"Rank {dist.get_rank()}: a peer left the group during a collective ({first}). {who} Its own log says "
            "why; after an out-of-memory error inside a collective `python -m launcher` starts the job again by "
            "itself (train.oom_restarts, docs/scaling.md \"OOM policy\"), so this rank's exit is expected then."
        )
    return (
        f"Rank {dist.get_rank()}: a collective (gradient all-reduce, loss mean or barrier) did not complete within "
        f"dist.timeout_s={timeout_s:g} s ({first}). {who} If a step or a validation pass legitimately takes longer, "
        f"raise dist.timeout_s."
    )
