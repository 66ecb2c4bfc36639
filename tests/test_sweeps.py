"""Sweeps without babysitting (issue 17): infeasible points are rows without workers, the ladder keeps off swept
keys, a re-run grid skips completed points, and an Optuna study killed mid-way finishes its n_trials in total."""

from __future__ import annotations

import contextlib
import json
import os
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from launcher.sweep.points import objective, previous_row, restrict_ladder
from tests.test_e2e import TINY
from tests.test_sweep_summary import summary
from yolo_ddp.logging.sweep import POINT_FILE, job_row

# A point trains in seconds on 2 CPU ranks.
SMALL = ["train.epochs=1", "data.synthetic.n_train=8", "data.synthetic.n_val=4", "data.synthetic.image_size=64",
         "data.imgsz=64", "logger=csv"]


def test_ladder_drops_rungs_that_change_a_swept_key():
    assert restrict_ladder(["amp", "batch", "imgsz"], ["train.batch", "train.lr0"]) == \
        (["amp", "imgsz"], "ladder without batch (swept: train.batch)")
    kept, note = restrict_ladder(["batch", "imgsz", "model"], ["data.imgsz", "model"])
    assert kept == ["batch"] and "imgsz/model" in note and "data.imgsz" in note
    assert restrict_ladder(["amp", "batch"], ["train.lr0"]) == (["amp", "batch"], "")


def test_a_job_dir_of_another_point_is_refused(tmp_path):
    (tmp_path / "sweep_row.json").write_text(json.dumps({"overrides": "train.batch=4", "status": "COMPLETED"}))
    assert previous_row(tmp_path, ["train.batch=4"])["status"] == "COMPLETED"
    with pytest.raises(ValueError, match=r"holds another point .*hydra.sweep.dir="):
        previous_row(tmp_path, ["train.batch=8"])


def test_infeasible_point_is_a_row_and_a_nan_objective(tmp_path):
    (tmp_path / POINT_FILE).write_text(json.dumps({"infeasible": True, "need_gib": 0.07, "have_gib": 0.0001,
                                                   "message": "Out of memory before the first step: ...",
                                                   "ladder": "ladder without batch (swept: train.batch)"}))
    row = job_row(3, "batch=8", ["train.batch=8"], "COMPLETED", tmp_path, swept=["train.batch"])
    assert row["status"] == "INFEASIBLE" and (row["need_gib"], row["have_gib"]) == (0.07, 0.0001)
    assert row["objective"] == "" and "Out of memory" in row["error"] and "without batch" in row["downgrades"]
    assert row["params"] == "train.batch=8" and row["command"] == "python -m launcher train.batch=8"
    assert objective(tmp_path, ["best_mAP50-95"]) != objective(tmp_path, ["best_mAP50-95"])  # NaN
    assert len(objective(tmp_path, ["best_mAP50-95", "img_per_s"])) == 2


def _run(args: list[str], tmp: Path, out: Path) -> subprocess.Popen:
    env = {**os.environ, "YOLO_DDP_OUTPUTS": str(out), "CUDA_VISIBLE_DEVICES": "", "YOLO_OFFLINE": "1",
           "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    given = {a.split("=", 1)[0] for a in args if "=" in a}
    tiny = [o for o in TINY + SMALL if o.split("=", 1)[0] not in given]
    # 2 ranks (a DDP job per point), after the swept keys: the summary's overrides column starts with those
    return subprocess.Popen([sys.executable, "-m", "launcher", "-m", *args, "launcher.nproc_per_node=2", *tiny,
                             f"data.cache_dir={tmp / 'cache'}"],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env,
                            cwd=Path(__file__).resolve().parents[1], start_new_session=True)


def _finish(proc: subprocess.Popen, timeout: int = 400) -> tuple[int, str]:
    out, _ = proc.communicate(timeout=timeout)
    return proc.returncode, out


def _memory_fraction_between(small: tuple[int, int], big: tuple[int, int]) -> float:
    """A train.memory_fraction whose budget lies halfway between two grid points' needs per rank (2 ranks), from
    the planner the launcher runs and this machine's free memory now: only the bigger point cannot fit."""
    from launcher.plan_only import plan_job
    from yolo_ddp.config import Config, DataConfig, TrainConfig

    def need(batch: int, imgsz: int) -> tuple[int, int]:
        cfg = Config(data=DataConfig(imgsz=imgsz), train=TrainConfig(batch=batch, amp="off", memory_fraction=1.0))
        mem, _ = plan_job(cfg, 2)
        return mem.need, mem.free

    (lo, free), (hi, _) = need(*small), need(*big)
    assert hi > 1.3 * lo
    return (lo + hi) / 2 / free


@pytest.mark.slow
def test_grid_marks_infeasible_points_without_workers_and_a_rerun_skips_completed(tmp_path):
    fraction = _memory_fraction_between((4, 256), (8, 256))
    grid = ["train.batch=4,8", "data.imgsz=64,256", f"train.memory_fraction={fraction:.6f}"]
    rc, out = _finish(_run(grid, tmp_path, tmp_path / "out"))
    assert rc == 0, out[-4000:]
    sweep_dir, rows = summary(tmp_path / "out")
    by_point = {(r["overrides"].split()[0], r["overrides"].split()[1]): r for r in rows}
    assert len(rows) == 4
    for (batch, imgsz), row in by_point.items():
        job_dir = Path(row["run_dir"])
        if (batch, imgsz) == ("train.batch=8", "data.imgsz=256"):  # the one point that cannot fit
            assert row["status"] == "INFEASIBLE" and float(row["need_gib"]) > float(row["have_gib"]), row
            assert "Out of memory before the first step" in row["error"] and row["objective"] == ""
            assert not list(job_dir.glob("rank*.log")) and not (job_dir / "resolved_config.yaml").exists()
        else:
            assert row["status"] == "COMPLETED" and row["best_mAP50-95"] != "" and row["objective"] != "", row
            assert row["batch_per_rank"] == str(int(batch.split("=")[1]) // 2)  # the swept batch, never downgraded
        assert "ladder without batch (swept: train.batch)" in row["downgrades"]
    assert (sweep_dir / "sweep_summary.png").read_bytes()[:4] == b"\x89PNG"
    assert "python -m launcher" in (sweep_dir / "sweep_best.txt").read_text()
    trained = {Path(r["run_dir"]) / "metrics.csv": (Path(r["run_dir"]) / "metrics.csv").stat().st_mtime_ns
               for r in rows if r["status"] == "COMPLETED"}

    rc, out = _finish(_run([*grid, f"hydra.sweep.dir={sweep_dir}"], tmp_path, tmp_path / "out"))
    assert rc == 0, out[-4000:]
    assert out.count("completed earlier: skipped, row kept") == 3
    assert {p: p.stat().st_mtime_ns for p in trained} == trained  # not trained again
    _, again = summary(tmp_path / "out")
    assert sorted((r["job"], r["status"]) for r in again) == sorted((r["job"], r["status"]) for r in rows)


def _trials(db: Path) -> list[tuple[int, str]]:
    if not db.exists():
        return []
    try:
        with sqlite3.connect(db) as con:
            return con.execute("SELECT number, state FROM trials ORDER BY number").fetchall()
    except sqlite3.OperationalError:  # tables not created yet, or locked for a moment
        return []


def _kill_tree(proc: subprocess.Popen) -> None:
    """SIGKILL the sweep and every process under it (the elastic agent's workers included), as a crash would."""
    import psutil

    family = [psutil.Process(proc.pid), *psutil.Process(proc.pid).children(recursive=True)]
    for p in family:
        with contextlib.suppress(psutil.NoSuchProcess):
            p.kill()
    psutil.wait_procs(family, timeout=30)
    proc.communicate()


@pytest.mark.slow
def test_optuna_study_killed_after_trial_2_finishes_with_3_trials_on_rerun(tmp_path):
    sweep_dir = tmp_path / "out" / "study"
    args = ["hydra/sweeper=optuna", "hydra.sweeper.n_trials=3", "hydra.sweeper.sampler.seed=0", "model=yolov8n",
            "train.batch=4", f"hydra.sweep.dir={sweep_dir}"]
    db = sweep_dir / "optuna.db"
    proc = _run(args, tmp_path, tmp_path / "out")
    deadline = time.monotonic() + 400
    while sum(state == "COMPLETE" for _, state in _trials(db)) < 2:
        assert proc.poll() is None, proc.communicate()[0][-4000:]
        assert time.monotonic() < deadline, "2 trials did not complete in time"
        time.sleep(0.5)
    _kill_tree(proc)  # the sweep dies in trial 3 (or just before asking for it)
    assert sum(state == "COMPLETE" for _, state in _trials(db)) == 2

    rc, out = _finish(_run(args, tmp_path, tmp_path / "out"))
    assert rc == 0, out[-4000:]
    assert _trials(db) == [(0, "COMPLETE"), (1, "COMPLETE"), (2, "COMPLETE")]  # 3 in total, not 5
    _, rows = summary(tmp_path / "out")
    assert [(r["job"], r["status"]) for r in rows] == [("0", "COMPLETED"), ("1", "COMPLETED"), ("2", "COMPLETED")]
    assert all(r["objective"] != "" and "train.lr0=" in r["params"] for r in rows)
    best = (sweep_dir / "sweep_best.txt").read_text()
    assert "python -m launcher" in best and "train.lr0=" in best
    assert (sweep_dir / "optimization_results.yaml").exists()
