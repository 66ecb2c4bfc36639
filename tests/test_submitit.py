"""A sweep through hydra-submitit-launcher, as on SLURM but with submitit's local executor: every point is
submitted as its own job, re-composes its config in that job's process and runs a full 2-rank DDP job."""

from __future__ import annotations

import csv
import json
import sys

import pytest

from tests.test_e2e import run

pytestmark = pytest.mark.slow


def test_submitit_local_multirun_runs_one_ddp_job_per_point(tmp_path):
    proc = run([sys.executable, "-m", "launcher", "-m", "hydra/launcher=submitit_local", "train.epochs=1",
                "train.batch=4,8"], tmp_path, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    [sweep_dir] = [p.parent for p in (tmp_path / "out").rglob("multirun.yaml")]
    job_ids = sorted(p.name for p in (sweep_dir / ".submitit").iterdir() if p.name.isdigit())
    assert len(job_ids) == 2  # one submitted job per sweep point
    batches = set()
    for job in ("0", "1"):  # both jobs wrote into the one sweep dir the parent made
        run_dir = sweep_dir / job
        result = json.loads((run_dir / "result.json").read_text())
        assert result["world_size"] == 2
        batches.add(result["plan"]["global_batch"])
        assert (run_dir / "metrics.csv").exists() and (run_dir / "best.pt").exists()
        assert (run_dir / "elastic_run_id").read_text().strip() in {f"job{j}" for j in job_ids}
    assert batches == {4, 8}
    rows = list(csv.DictReader((sweep_dir / "sweep_summary.csv").open()))
    assert sorted((r["name"], r["status"]) for r in rows) == [("batch=4", "COMPLETED"), ("batch=8", "COMPLETED")]
