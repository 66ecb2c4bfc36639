"""A multirun writes sweep_summary.csv/.png through the Hydra callback, failed jobs included, and its W&B runs
share the sweep's group and are named by what the sweep varies."""

from __future__ import annotations

import csv
import sys
from pathlib import Path

import pytest
import yaml

from tests.test_dashboard import build, plotted
from tests.test_e2e import run
from tests.test_wandb import FAKE_KEY, assert_no_key
from tests.wandb_records import offline_runs, read_run
from yolo_ddp.logging import dashboard

pytestmark = pytest.mark.slow


def summary(out: Path) -> tuple[Path, list[dict[str, str]]]:
    [path] = out.rglob("sweep_summary.csv")
    with path.open() as f:
        return path.parent, list(csv.DictReader(f))


def swept_by(job_dirs: list[Path]) -> list[str]:
    """Config keys whose values differ between the jobs, read from each job's .hydra/overrides.yaml."""
    values = [dict(o.split("=", 1) for o in yaml.safe_load((d / ".hydra" / "overrides.yaml").read_text()))
              for d in job_dirs]
    return [k for k in values[0] if len({v.get(k) for v in values}) > 1]


def test_2x1_multirun_writes_summary_and_groups_wandb_runs(tmp_path):
    proc = run([sys.executable, "-m", "launcher", "-m", "launcher.nproc_per_node=2", "train.epochs=1", "train.batch=4,8", "data.imgsz=96",
                "logger=wandb", "logger.mode=offline", "logger.dashboard=true"], tmp_path, timeout=600,
               extra_env={"WANDB_API_KEY": FAKE_KEY})
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    sweep_dir, rows = summary(tmp_path / "out")
    assert [(r["job"], r["name"], r["status"]) for r in rows] == [("0", "batch=4", "COMPLETED"),
                                                                  ("1", "batch=8", "COMPLETED")]
    for row, per_rank in zip(rows, ("2", "4"), strict=True):
        assert row["world_size"] == "2" and row["batch_per_rank"] == per_rank and row["imgsz"] == "96"
        assert row["accumulate"] and float(row["img_per_s"]) > 0 and float(row["peak_mem_gib"]) > 0
        assert row["best_mAP50-95"] != "" and "train.batch=" in row["overrides"]
    assert (sweep_dir / "sweep_summary.png").read_bytes()[:4] == b"\x89PNG"

    runs = [read_run(p) for job in (sweep_dir / "0", sweep_dir / "1") for p in offline_runs(job)]
    assert [r.name for r in runs] == ["batch=4", "batch=8"]
    assert len({r.group for r in runs}) == 1 and runs[0].group == f"sweep-{sweep_dir.parent.name}_{sweep_dir.name}"
    assert len({r.run_id for r in runs}) == 2
    assert (sweep_dir / "0" / "resolved_config.yaml").exists()  # the config the workers read, checked for the key
    assert_no_key(sweep_dir, proc.stdout, proc.stderr)

    # logger.dashboard=true offline: the sweep dir holds the view, whose sweep axes are what the sweep varied,
    # and the report it would create; each job's run dir has the job's view (the same axes).
    spec = dashboard.read_spec(sweep_dir / dashboard.SPEC_FILE)
    axes = plotted(build(spec)).config
    assert axes == swept_by([sweep_dir / "0", sweep_dir / "1"]) == ["train.batch"]
    assert all(dashboard.read_spec(sweep_dir / j / dashboard.SPEC_FILE)["swept"] == axes for j in "01")
    report = spec["report"]
    assert report["group"] == runs[0].group and [r[1] for r in report["rows"]] == ["batch=4", "batch=8"]
    best = max(rows, key=lambda r: float(r["best_mAP50-95"]))
    assert report["best"]["run_id"] == (Path(best["run_dir"]) / "wandb_run_id.txt").read_text()
    assert proc.stdout.count(f"and the report '{report['title']}'") == 1

    # The local picture of the view reads the same keys from the run files.
    from yolo_ddp.logging.dashboard import picture

    local = [picture.load_run(d) for d in picture.find_runs(sweep_dir)]
    assert [r.config["train.batch"] for r in local] == [4, 8] and [r.name for r in local] == ["batch=4", "batch=8"]
    assert local[0].history["val/mAP50-95"][1] == pytest.approx([float(rows[0]["best_mAP50-95"])], abs=1e-5)
    assert local[0].per_class_ap and "epoch/peak_mem_gib" in local[1].history
    out = picture.draw(spec, picture.find_runs(sweep_dir), tmp_path / "dashboard.png")
    assert out.read_bytes()[:4] == b"\x89PNG"


def test_failed_sweep_job_is_a_row(tmp_path):
    proc = run([sys.executable, "-m", "launcher", "-m", "launcher.nproc_per_node=2", "train.epochs=1", "train.batch=7",
                "logger=none"], tmp_path)
    assert proc.returncode != 0
    _, rows = summary(tmp_path / "out")
    assert [r["status"] for r in rows] == ["FAILED"] and "train.batch=7" in rows[0]["overrides"].split()
    assert "split evenly" in rows[0]["error"] and rows[0]["world_size"] == ""
