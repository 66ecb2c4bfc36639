"""End to end, as a user runs it: torchrun and the self-spawning launcher on 2 CPU ranks (gloo)."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from yolo_ddp.plan import RunPlan

pytestmark = pytest.mark.slow

TINY = [
    "+experiment=pcb_defects", "train=cpu_quick", "data.synthetic.n_train=32", "data.synthetic.n_val=16",
    "data.synthetic.image_size=128", "data.imgsz=96", "train.batch=8", "train.val_every=1", "data.workers=0",
]


def run(args: list[str], tmp: Path, timeout: int = 400, extra_env: dict | None = None) -> subprocess.CompletedProcess:
    # CPU + gloo by design, also on a GPU machine (two ranks cannot share one GPU under NCCL).
    env = {**os.environ, "YOLO_DDP_OUTPUTS": str(tmp / "out"), "CUDA_VISIBLE_DEVICES": "", "YOLO_OFFLINE": "1",
           **(extra_env or {})}
    given = {a.split("=", 1)[0] for a in args if "=" in a}
    tiny = [o for o in TINY if o.split("=", 1)[0] not in given]  # the test's own values win (sweeps)
    proc = subprocess.run([*args, *tiny, f"data.cache_dir={tmp / 'cache'}"], capture_output=True, text=True,
                          env=env, timeout=timeout, cwd=Path(__file__).resolve().parents[1])
    return proc


def torchrun(*overrides: str) -> list[str]:
    return [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "-m", "launcher", *overrides]


def epochs_in(metrics: Path) -> list[int]:
    with metrics.open() as f:
        return [int(row["epoch"]) for row in csv.DictReader(f)]


def test_torchrun_trains_checkpoints_and_resumes(tmp_path):
    first = run(torchrun("train.epochs=2"), tmp_path)
    assert first.returncode == 0, first.stdout[-3000:] + first.stderr[-3000:]
    [run_dir] = [p.parent for p in (tmp_path / "out").rglob("metrics.csv")]
    assert epochs_in(run_dir / "metrics.csv") == [1, 2]
    assert {p.name for p in run_dir.glob("rank*.log")} == {"rank0.log", "rank1.log"}
    assert (run_dir / ".hydra" / "config.yaml").exists()
    plan = json.loads((run_dir / "plan.json").read_text())
    assert plan["world_size"] == 2 and plan["batch_per_rank"] == 4
    assert "final mAP50=" in first.stdout

    state = torch.load(run_dir / "last.pt", weights_only=True)  # the training state needs no unpickling
    schedule = RunPlan(**plan).schedule
    assert state["epoch"] == 2 and state["step"] == schedule.first_step(2)

    from ultralytics import YOLO

    image = next((tmp_path / "cache").rglob("images/val/*.jpg"))
    results = YOLO(str(run_dir / "best.pt")).predict(str(image), imgsz=96, verbose=False)
    assert len(results) == 1 and results[0].names[0] == "missing_hole"

    before = (run_dir / "last.pt").read_bytes()
    refused = run(torchrun("train.epochs=3", f"hydra.run.dir={run_dir}"), tmp_path)  # fresh run, same dir
    assert refused.returncode != 0 and "already holds a run" in refused.stdout + refused.stderr
    assert (run_dir / "last.pt").read_bytes() == before and epochs_in(run_dir / "metrics.csv") == [1, 2]

    again = run(torchrun("train.epochs=3", "train.resume=true", f"hydra.run.dir={run_dir}"), tmp_path)
    assert again.returncode == 0, again.stdout[-3000:] + again.stderr[-3000:]
    assert epochs_in(run_dir / "metrics.csv") == [1, 2, 3]  # no epoch repeated or skipped
    state = torch.load(run_dir / "last.pt", weights_only=True)
    assert state["epoch"] == 3 and state["step"] == RunPlan(**{**plan, "epochs": 3}).schedule.first_step(3)


def test_resume_without_checkpoint_is_a_clear_error(tmp_path):
    proc = run(torchrun("train.epochs=1", "train.resume=true", f"hydra.run.dir={tmp_path / 'empty'}"), tmp_path)
    assert proc.returncode != 0
    assert "last.pt does not exist" in proc.stdout + proc.stderr


def test_multirun_2x2_runs_four_ddp_jobs(tmp_path):
    proc = run([sys.executable, "-m", "launcher", "-m", "launcher.nproc_per_node=2", "train.epochs=1",
                "train.batch=4,8", "data.imgsz=64,96"],
               tmp_path, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    results = sorted((tmp_path / "out").rglob("result.json"))
    assert len(results) == 4
    seen = set()
    for path in results:
        result = json.loads(path.read_text())
        assert result["world_size"] == 2  # every sweep point is a full 2-process DDP job
        seen.add((result["plan"]["global_batch"], result["plan"]["imgsz"]))
        assert (path.parent / "metrics.csv").exists() and (path.parent / "best.pt").exists()
    assert seen == {(4, 64), (4, 96), (8, 64), (8, 96)}


def test_failing_sweep_job_exits_nonzero_and_is_named(tmp_path):
    proc = run([sys.executable, "-m", "launcher", "-m", "launcher.nproc_per_node=2", "train.epochs=1",
                "train.batch=7,8"], tmp_path)
    assert proc.returncode != 0
    out = proc.stdout + proc.stderr
    assert "train.batch=7" in out and "split evenly over 2 ranks" in out


def test_multirun_is_refused_under_torchrun(tmp_path):
    proc = run([sys.executable, "-m", "launcher", "-m", "train.batch=8,16"], tmp_path,
               extra_env={"TORCHELASTIC_RUN_ID": "x", "RANK": "0"})
    assert proc.returncode == 2
    assert "cannot run under torchrun" in proc.stderr


def losses(metrics: Path) -> list[float]:
    with metrics.open() as f:
        return [sum(float(row[k]) for k in ("box_loss", "cls_loss", "dfl_loss")) for row in csv.DictReader(f)]


def test_dali_backend_trains_on_two_cpu_ranks(tmp_path):
    # 160 px keeps the drawn defects large enough for the assigner from the first steps, so the loss falls
    # steadily within a few epochs; mosaic runs for 7 epochs, then close_mosaic switches the pipeline.
    proc = run(torchrun("data.backend=dali", "train.epochs=10", "data.synthetic.n_train=128",
                        "data.synthetic.image_size=160", "data.imgsz=160", "train.batch=16", "train.val_every=100",
                        "data.mosaic=1.0", "data.close_mosaic=3"), tmp_path)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "data backend: dali" in proc.stdout and "mosaic off for the last epochs" in proc.stdout
    [metrics] = (tmp_path / "out").rglob("metrics.csv")
    loss = losses(metrics)
    assert len(loss) == 10 and loss[-1] < 0.7 * max(loss[:3]), loss
