"""Faults on real 2-process gloo jobs: SIGKILL mid-epoch with elastic restarts (one and two "nodes"),
SIGTERM, and a rank that stops participating."""

from __future__ import annotations

import csv
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest
import torch
import torch.multiprocessing as mp

from tests.conftest import REPO, free_port

pytestmark = pytest.mark.slow

# 128 images, 8 per step (cpu_quick: nbs 16 -> 2 micro-steps per optimizer step): 8 optimizer steps per epoch.
# No warmup: it ramps accumulation (as Ultralytics), which would make the first epoch's step count differ.
JOB = ["+experiment=pcb_defects", "train=cpu_quick", "train.epochs=2", "train.warmup_epochs=0",
       "data.synthetic.n_train=128",
       "data.synthetic.n_val=16", "data.synthetic.image_size=128", "data.imgsz=96", "train.batch=8",
       "data.workers=0", "logger=csv", "logger.log_every_steps=1", "train.val_every=2", "launcher.nproc_per_node=2"]
STEPS_PER_EPOCH, EPOCHS = 8, 2


def env(tmp: Path) -> dict[str, str]:
    return {**os.environ, "YOLO_DDP_OUTPUTS": str(tmp / "out"), "CUDA_VISIBLE_DEVICES": "", "YOLO_OFFLINE": "1"}


def start(cmd: list[str], tmp: Path, log: str, extra_env: dict[str, str] | None = None) -> subprocess.Popen:
    out = open(tmp / log, "w")  # noqa: SIM115 - closed with the process
    return subprocess.Popen([*cmd, f"data.cache_dir={tmp / 'cache'}"], stdout=out, stderr=subprocess.STDOUT,
                            env={**env(tmp), **(extra_env or {})}, cwd=REPO)


def steps_logged(tmp: Path) -> int:
    rows = 0
    for path in (tmp / "out").rglob("steps.csv"):
        with path.open() as f:
            rows = max(rows, sum(1 for _ in csv.DictReader(f)))
    return rows


def wait_for_steps(proc: subprocess.Popen, tmp: Path, n: int, timeout: float = 300) -> None:
    deadline = time.time() + timeout
    while steps_logged(tmp) < n:
        assert proc.poll() is None, (tmp / "log").read_text()[-3000:] if (tmp / "log").exists() else "exited"
        assert time.time() < deadline, "the job made no progress"
        time.sleep(0.2)


def workers(proc: subprocess.Popen) -> list[psutil.Process]:
    found = []
    for child in psutil.Process(proc.pid).children(recursive=True):
        try:
            env_rank = child.environ().get("RANK")
        except psutil.Error:
            continue
        if env_rank is not None and "TORCHELASTIC_RUN_ID" in child.environ():
            found.append(child)
    return found


def kill_rank(proc: subprocess.Popen, rank: int) -> None:
    [victim] = [w for w in workers(proc) if w.environ()["RANK"] == str(rank)]
    victim.send_signal(signal.SIGKILL)


def final_state(tmp: Path) -> tuple[dict, list[int]]:
    [last] = list((tmp / "out").rglob("last.pt"))
    state = torch.load(last, weights_only=True)
    metrics = last.parent / "metrics.csv"
    if not metrics.exists():  # stopped before the first epoch ended
        return state, []
    with metrics.open() as f:
        return state, [int(r["epoch"]) for r in csv.DictReader(f)]


def finish(proc: subprocess.Popen, tmp: Path, log: str, timeout: float = 400) -> None:
    code = proc.wait(timeout=timeout)
    assert code == 0, (tmp / log).read_text()[-4000:]


def test_sigkill_mid_epoch_restarts_and_ends_like_an_uninterrupted_run(tmp_path):
    proc = start([sys.executable, "-m", "launcher", *JOB, "launcher.max_restarts=1", "train.save_every_steps=2"],
                 tmp_path, "log")
    wait_for_steps(proc, tmp_path, 5)  # inside epoch 1, after a mid-epoch checkpoint at step 4
    kill_rank(proc, 1)
    finish(proc, tmp_path, "log")
    state, epochs = final_state(tmp_path)
    assert (state["epoch"], state["step"]) == (EPOCHS, EPOCHS * STEPS_PER_EPOCH)  # as without the crash
    assert epochs == [1, 2]  # no epoch repeated or skipped
    text = (tmp_path / "log").read_text()
    assert "resumed from" in text and "steps done" in text


def test_two_nodes_restart_together_after_a_rank_dies(tmp_path):
    port = free_port()
    nodes = []
    for node_rank in (0, 1):
        cmd = [sys.executable, "-m", "torch.distributed.run", "--nnodes=2", "--nproc-per-node=1",
               f"--node-rank={node_rank}", "--rdzv-backend=c10d", f"--rdzv-endpoint=127.0.0.1:{port}",
               "--rdzv-id=twonodes", "--local-addr=127.0.0.1", "--max-restarts=1", "--monitor-interval=0.5",
               "-m", "launcher", *JOB, "train.save_every_steps=2"]
        # Each restart round gets a fresh worker store: with the agent's shared store, a node that re-joins
        # without a failure of its own keeps restart count 0 and reads the dead round's addresses.
        nodes.append(start(cmd, tmp_path, f"node{node_rank}.log", {"TORCH_DISABLE_SHARE_RDZV_TCP_STORE": "1"}))
    wait_for_steps(nodes[0], tmp_path, 5)
    kill_rank(nodes[1], 1)  # the worker of the second "node"
    for i, p in enumerate(nodes):
        finish(p, tmp_path, f"node{i}.log")
    state, epochs = final_state(tmp_path)
    assert (state["epoch"], state["step"]) == (EPOCHS, EPOCHS * STEPS_PER_EPOCH) and epochs == [1, 2]
    assert [p.name for p in (tmp_path / "out").iterdir()] == ["twonodes"]  # one run dir, named by --rdzv-id
    assert "resumed from" in (tmp_path / "node0.log").read_text()


def test_sigterm_stops_every_rank_after_writing_last_pt_and_resume_finishes(tmp_path):
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "-m", "launcher", *JOB,
                f"hydra.run.dir={tmp_path / 'out' / 'run'}"]
    proc = start(torchrun, tmp_path, "log")
    wait_for_steps(proc, tmp_path, 3)
    proc.send_signal(signal.SIGTERM)  # the agent forwards it to every worker
    proc.wait(timeout=120)
    text = (tmp_path / "log").read_text()
    assert "stopped by SIGTERM after optimizer step" in text
    state, _ = final_state(tmp_path)
    assert 0 < state["step"] < STEPS_PER_EPOCH and state["epoch"] == 0  # a mid-epoch checkpoint
    again = start([*torchrun, "train.resume=true"], tmp_path, "log2")
    finish(again, tmp_path, "log2")
    state, epochs = final_state(tmp_path)
    assert (state["epoch"], state["step"]) == (EPOCHS, EPOCHS * STEPS_PER_EPOCH) and epochs == [1, 2]
    with (tmp_path / "out" / "run" / "steps.csv").open() as f:
        steps = [int(r["step"]) for r in csv.DictReader(f)]
    assert steps == list(range(1, EPOCHS * STEPS_PER_EPOCH + 1))  # each step trained exactly once


def _stall_worker(rank: int, port: int, out: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE="2",
                      LOCAL_RANK=str(rank), TORCHELASTIC_RUN_ID="stall")
    from yolo_ddp import dist
    from yolo_ddp.engine.heartbeat import Heartbeat, explain_timeout, is_collective_timeout

    dist.init_process_group(timeout_s=4, backend="gloo")
    heartbeat = Heartbeat()
    heartbeat.beat(12 if rank == 0 else 11)
    if rank == 1:
        time.sleep(15)  # stops participating: no all-reduce from this rank
        return
    t0 = time.time()
    try:
        dist.all_reduce_mean(torch.ones(1))
        message = "no error"
    except Exception as e:  # what train() turns into CollectiveTimeout
        assert is_collective_timeout(e), repr(e)
        message = explain_timeout(e, heartbeat, 4, "RUN")
    Path(out, "msg.txt").write_text(f"{time.time() - t0:.1f}\n{message}")


def test_a_stalled_rank_fails_the_others_within_the_timeout_naming_it(tmp_path):
    mp.spawn(_stall_worker, args=(free_port(), str(tmp_path)), nprocs=2, join=True)
    elapsed, message = (tmp_path / "msg.txt").read_text().split("\n", 1)
    assert float(elapsed) < 12  # dist.timeout_s=4, not a silent hang
    assert "dist.timeout_s=4" in message and "Behind: rank 1 (rank 1: last step 11" in message
    assert "RUN/rank1.log" in message
