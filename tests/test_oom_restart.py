"""An OOM no rank can retry in place does not end the run: real `python -m launcher` jobs on 2 gloo ranks.

One rank raises torch.OutOfMemoryError inside a SyncBatchNorm forward, or inside the final micro-step's backward
(tests/oom_inject/sitecustomize.py). The rank records half the micro-batch, the job fails, and the launcher
starts it again from last.pt at that split, with the default config (`train.oom_restarts=3`,
`launcher.max_restarts=0`); the run ends with the optimizer steps an uninjected run takes.
"""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from tests.conftest import REPO
from yolo_ddp.schedule import StepSchedule

pytestmark = pytest.mark.slow

# 64 images, 4 per rank, nbs 16 (train=cpu_quick, chosen without GPU): 2 micro-steps per optimizer step, 10 steps
# over 2 epochs (warmup ramps accumulation in the first). SyncBatchNorm is on (sync_bn=auto: 2 CPU ranks x 4).
JOB = ["+experiment=pcb_defects", "launcher.nproc_per_node=2", "train.epochs=2", "train.batch=8",
       "data.synthetic.n_train=64", "data.synthetic.n_val=16", "data.synthetic.image_size=128", "data.imgsz=96",
       "data.workers=0", "logger=csv", "logger.log_every_steps=1"]


def run_job(tmp: Path, inject: str, *overrides: str) -> tuple[Path, str]:
    env = {**os.environ, "YOLO_DDP_OUTPUTS": str(tmp / "out"), "CUDA_VISIBLE_DEVICES": "", "YOLO_OFFLINE": "1",
           "YOLO_DDP_TEST_OOM": inject, "PYTHONPATH": os.pathsep.join([str(REPO / "tests" / "oom_inject"), str(REPO)])}
    proc = subprocess.run([sys.executable, "-m", "launcher", *JOB, *overrides, f"data.cache_dir={tmp / 'cache'}"],
                          cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=400)
    assert proc.returncode == 0, proc.stdout[-5000:]
    [run_dir] = [p.parent for p in (tmp / "out").rglob("plan.json")]
    return run_dir, proc.stdout


def check_finished_like_an_uninjected_run(run_dir: Path) -> int:
    plan = json.loads((run_dir / "plan.json").read_text())
    total = StepSchedule(plan["loader_batches_per_epoch"], plan["accumulate"], plan["warmup_batches"],
                         plan["epochs"]).total_steps  # what the plan gives without any OOM
    state = torch.load(run_dir / "last.pt", weights_only=True)
    assert (state["epoch"], state["step"]) == (2, total)
    assert json.loads((run_dir / "result.json").read_text())["step"] == total
    with (run_dir / "metrics.csv").open() as f:
        assert [int(r["epoch"]) for r in csv.DictReader(f)] == [1, 2]
    with (run_dir / "steps.csv").open() as f:
        steps = [int(r["step"]) for r in csv.DictReader(f)]  # the failed attempt's rows stay: redone steps repeat
    assert sorted(set(steps)) == list(range(1, total + 1)) and steps[-1] == total
    assert json.loads((run_dir / "oom_split.json").read_text())["splits"] == 2
    return len(steps) - total  # steps redone


def test_oom_in_a_syncbn_forward_restarts_the_job_and_ends_with_the_same_steps(tmp_path: Path) -> None:
    # Step 2 (0-based), before any checkpoint: the job starts again from the first step, at the recorded split.
    run_dir, log = run_job(tmp_path, "forward:2:1")
    assert "inside a SyncBatchNorm forward" in log  # rank 1's failure
    assert "OOM restart 1 of 3: a rank ran out of memory inside a collective at optimizer step 2; starting the job " \
           "again from the first step with each loader batch cut into 2 micro-batches" in log
    assert "micro-batch split 2 ways" in log
    assert check_finished_like_an_uninjected_run(run_dir) == 2


def test_oom_in_the_synchronising_backward_resumes_from_an_in_epoch_checkpoint(tmp_path: Path) -> None:
    # train.save_every_s=0.01 stands in for the default 120 s of a longer run: a time-based in-epoch last.pt after
    # every step, whatever this machine's step time (1 s let fast steps reach the OOM before any save: flaky).
    run_dir, log = run_job(tmp_path, "backward:4:0", "train.save_every_s=0.01")
    assert "inside the gradient all-reduce's backward" in log  # rank 0's failure
    assert "OOM restart 1 of 3: a rank ran out of memory inside a collective at optimizer step 4; starting the job " \
           "again from last.pt" in log
    resumed = [line for line in log.splitlines() if line.startswith("resumed from")]
    assert resumed and "0 epochs" in resumed[0], log[-3000:]  # an in-epoch last.pt, not the run's start
    redone = check_finished_like_an_uninjected_run(run_dir)
    assert 0 <= redone < 4, redone  # the steps after the last in-epoch checkpoint
