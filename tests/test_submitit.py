"""The SLURM path on one machine: a sweep through hydra-submitit-launcher with submitit's local executor (every
point submitted as its own job, re-composed in that job's process, a full 2-rank DDP job), and two node tasks
with SLURM's variables forming one multi-node job (the local executor runs one node only)."""

from __future__ import annotations

import csv
import json
import sys
from concurrent.futures import ThreadPoolExecutor

import pytest

from tests.conftest import free_port
from tests.test_e2e import run

pytestmark = pytest.mark.slow


def test_submitit_local_multirun_runs_one_ddp_job_per_point(tmp_path):
    proc = run([sys.executable, "-m", "launcher", "-m", "hydra/launcher=submitit_local", "launcher.nproc_per_node=2",
                "train.epochs=1", "train.batch=4,8"], tmp_path, timeout=300)
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


def test_two_slurm_node_tasks_form_one_ddp_job(tmp_path):
    """What srun starts for hydra/launcher=slurm with nodes=2, on one machine: one task per 'node', each
    with the SLURM variables of its node, meeting at the derived endpoint as one 2-rank job."""
    run_dir = tmp_path / "out" / "job"
    slurm = {"SUBMITIT_EXECUTOR": "slurm", "SLURM_JOB_ID": "4242", "SLURM_JOB_NUM_NODES": "2", "SLURM_NTASKS": "2",
             "SLURM_JOB_NODELIST": "localhost", "YOLO_DDP_RDZV_PORT": str(free_port())}
    args = [sys.executable, "-m", "launcher", "train.epochs=1", "launcher.nproc_per_node=1", f"hydra.run.dir={run_dir}"]
    with ThreadPoolExecutor(2) as pool:  # both nodes at once: each waits at the rendezvous for the other
        procs = list(pool.map(lambda node: run(args, tmp_path, timeout=300, extra_env={**slurm, "SLURM_NODEID": node}),
                              ["0", "1"]))
    for node, proc in enumerate(procs):
        assert proc.returncode == 0, f"node {node}:\n" + proc.stdout[-3000:] + proc.stderr[-3000:]
    result = json.loads((run_dir / "result.json").read_text())
    assert result["world_size"] == 2 and result["plan"]["batch_per_rank"] == 4
    assert (run_dir / "elastic_run_id").read_text().strip() == "job4242"
    assert {p.name for p in run_dir.glob("launcher*.log")} == {"launcher.log", "launcher.node1.log"}
    assert "x 2 node(s)" in (run_dir / "launcher.log").read_text()
    assert {p.name for p in run_dir.glob("rank*.log")} == {"rank0.log", "rank1.log"}
