"""The stall monitor names a stalled rank while every main thread waits in native code (on GPUs: the loss's CUDA
sync behind an NCCL all-reduce that never completes), before NCCL's watchdog ends the job without a report."""

from __future__ import annotations

import ctypes
import logging
import os
import time
from pathlib import Path

import pytest
import torch.multiprocessing as mp

from tests.conftest import free_port
from yolo_ddp import dist
from yolo_ddp.engine.heartbeat import Heartbeat, StallMonitor, poll_s, stall_after_s


class FakeStore:
    def __init__(self, fail: bool = False) -> None:
        self.data: dict[str, bytes] = {}
        self.fail = fail

    def post(self, rank: int, step: int, where: str = "") -> None:
        self.data[f"yolo_ddp/heartbeat/{rank}"] = f"{step} 0.0 {where}".encode()

    def check(self, keys):
        if self.fail:
            raise RuntimeError("Connection reset by peer")
        return all(k in self.data for k in keys)

    def multi_get(self, keys):
        return [self.data[k] for k in keys]

    def get(self, key):
        return self.data[key]


def monitor(store: FakeStore, world: int, timeout_s: float = 30) -> tuple[StallMonitor, list[float]]:
    now = [0.0]
    return StallMonitor(store, world, timeout_s, "RUN", clock=lambda: now[0]), now


def test_the_report_comes_before_nccls_watchdog_and_reads_the_store_every_few_seconds():
    assert (stall_after_s(600), poll_s(600)) == (620, 10)
    assert (stall_after_s(1), poll_s(1)) == (2, 0.2)
    for timeout_s in (1, 30, 600, 3600):  # NCCL's watchdog fires dist.timeout_s + NCCL_GRACE_S after the all-reduce
        assert timeout_s < stall_after_s(timeout_s) < timeout_s + dist.NCCL_GRACE_S - poll_s(timeout_s)


def test_names_the_rank_behind_once_then_rarely_and_says_when_it_clears(caplog):
    store = FakeStore()
    for r in (0, 2, 3):
        store.post(r, 12, f"nodeA {100 + r}")
    store.post(1, 11, "nodeB 99")
    m, now = monitor(store, 4)
    caplog.set_level(logging.INFO, "yolo_ddp.engine.heartbeat")
    assert m.check(m.read()) is None  # first sight: the clock starts
    now[0] = 49
    assert m.check(m.read()) is None  # under dist.timeout_s + 20 s: a slow step, not a stall
    now[0] = 51
    message = m.check(m.read())
    assert "Stall: no rank has finished an optimizer step for 51 s (dist.timeout_s=30" in message
    assert "Behind: rank 1 (last step 11, quiet 51 s; rank 0, 2-3 at step 12)" in message
    assert "`py-spy dump --pid` shows where it is (pid 99 on nodeB)" in message
    assert "RUN/rank1.log" in message and "main thread is at" in message
    for t in (60, 101):
        now[0] = t
        assert m.check(m.read()) is None  # no spam: the next report at twice the quiet time
    now[0] = 103
    assert "for 103 s" in m.check(m.read())
    store.post(0, 13)
    now[0] = 110
    assert m.check(m.read()) == "Stall cleared: step 13 finished after 110 s without one."
    assert [r.levelname for r in caplog.records] == ["WARNING"] * 3


def test_ranks_at_the_same_step_are_not_blamed_and_a_silent_rank_is():
    store = FakeStore()
    for r in range(2):
        store.post(r, 12)
    m, now = monitor(store, 2, timeout_s=10)
    m.check(m.read())
    now[0] = 21
    message = m.check(m.read())
    assert "Behind" not in message and "Every rank last finished step 12" in message and "inside step 13" in message

    store = FakeStore()
    store.post(0, 3)
    m, now = monitor(store, 3, timeout_s=10)
    m.check(m.read())
    now[0] = 21
    assert "Behind: rank 1-2 (never reported; rank 0 at step 3)" in m.check(m.read())


def test_a_broken_store_never_reaches_the_main_thread_and_the_thread_stops(caplog):
    caplog.set_level(logging.INFO, "yolo_ddp.engine.heartbeat")
    m = StallMonitor(FakeStore(fail=True), 2, 1.0, "RUN")
    m.start()
    time.sleep(0.7)  # three polls
    m.stop()
    assert not m.is_alive()
    assert [r.message.split(" (")[0] for r in caplog.records] == ["stall monitor: cannot read the heartbeats"]


def test_no_monitor_without_a_process_group():
    heartbeat = Heartbeat()
    heartbeat.watch(1.0, "RUN")
    assert heartbeat.monitor is None
    heartbeat.close()


TIMEOUT_S, BLOCK_S = 1.0, 5  # a stall is reported after stall_after_s(1.0) = 2 s without a step


def _blocked_worker(rank: int, port: int, out: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE="2",
                      LOCAL_RANK=str(rank), TORCHELASTIC_RUN_ID="stall-monitor")
    handler = logging.FileHandler(Path(out, f"rank{rank}.log"))
    handler.setFormatter(logging.Formatter("%(created).3f %(message)s"))
    logging.getLogger().addHandler(handler)
    logging.getLogger().setLevel(logging.INFO)
    from yolo_ddp import dist
    from yolo_ddp.engine.heartbeat import Heartbeat

    dist.init_process_group(timeout_s=60, backend="gloo")  # the collectives' own timeout is far away
    heartbeat = Heartbeat()
    heartbeat.watch(TIMEOUT_S, "RUN")
    monitor = heartbeat.monitor
    heartbeat.beat(12 if rank == 0 else 11)
    t0 = time.time()
    # Rank 1 stops taking part; rank 0 waits for it in native code, as a CUDA sync behind NCCL would: neither
    # main thread runs Python (ctypes releases the GIL around the C call).
    ctypes.CDLL(None).sleep(BLOCK_S)
    t1 = time.time()
    heartbeat.close()
    Path(out, f"rank{rank}.txt").write_text(f"{t0} {t1} {monitor is not None} {monitor and monitor.is_alive()}")
    dist.barrier()
    dist.destroy_process_group()


@pytest.mark.slow
def test_a_stalled_rank_is_named_while_every_main_thread_is_blocked_in_native_code(tmp_path):
    mp.spawn(_blocked_worker, args=(free_port(), str(tmp_path)), nprocs=2, join=True)
    t0, t1, has_monitor, alive = (tmp_path / "rank0.txt").read_text().split()
    assert (has_monitor, alive) == ("True", "False")  # local rank 0 watches, and stops when asked
    assert (tmp_path / "rank1.txt").read_text().split()[2] == "False"  # one monitor per node
    lines = [line.split(" ", 1) for line in (tmp_path / "rank0.log").read_text().splitlines() if "Stall:" in line]
    assert 1 <= len(lines) <= 2, lines  # once, then at twice the quiet time
    at, message = float(lines[0][0]), lines[0][1]
    assert float(t0) < at < float(t1), "reported while the main thread was still blocked"
    assert at - float(t0) < stall_after_s(TIMEOUT_S) + 2.0, message
    assert "Behind: rank 1 (last step 11" in message and "rank 0 at step 12" in message
    assert "RUN/rank1.log" in message and "main thread is at test_stall_monitor.py" in message


class Progress:
    """What explain_timeout reads of a Heartbeat: (step, rank, seconds ago), slowest first."""

    def progress(self) -> list[tuple[int, int, float]]:
        return [(11, 1, 9.0), (12, 0, 0.5)]


def test_a_peer_that_exited_is_not_reported_as_a_timeout():
    from yolo_ddp.engine.heartbeat import explain_timeout, is_collective_timeout

    left = RuntimeError("[gloo/transport/tcp/pair.cc:534] Connection closed by peer [127.0.0.1]:4321")
    assert is_collective_timeout(left)
    message = explain_timeout(left, Progress(), 600, "RUN")
    assert "a peer left the group" in message and "did not complete within" not in message
    assert "Behind: rank 1" in message and "RUN/rank1.log" in message and "train.oom_restarts" in message
    timed_out = explain_timeout(RuntimeError("Timed out waiting 600000ms"), Progress(), 600, "RUN")
    assert "did not complete within dist.timeout_s=600 s" in timed_out
