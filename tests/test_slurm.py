"""SLURM through hydra-submitit-launcher: what each node's task derives from the allocation, and the conf."""

from __future__ import annotations

import json
import os

import pytest
from hydra import compose

from launcher.job import names as rid
from launcher.job.names import SWEEP_ARGV_ENV, export_sweep, sweep_argv
from launcher.job.slurm import NodeTask, node_rank, node_task, rdzv_port
from yolo_ddp.config import LauncherConfig

SUBMITIT_ENV = ("SUBMITIT_EXECUTOR", "SLURM_JOB_ID", "SLURM_NTASKS", "SLURM_JOB_NUM_NODES", "SLURM_NODEID",
                "SLURM_JOB_NODELIST", "YOLO_DDP_RDZV_PORT")


@pytest.fixture
def slurm(monkeypatch):
    """This process as task `node` of SLURM job 4242 on gpu-node[07-08] (what srun exports)."""
    for key in SUBMITIT_ENV:
        monkeypatch.delenv(key, raising=False)

    def on(node: int = 0, nodes: int = 2, tasks: int | None = None, nodelist: str = "gpu-node[07-08]") -> None:
        env = {"SUBMITIT_EXECUTOR": "slurm", "SLURM_JOB_ID": "4242", "SLURM_JOB_NUM_NODES": str(nodes),
               "SLURM_NTASKS": str(nodes if tasks is None else tasks), "SLURM_NODEID": str(node),
               "SLURM_JOB_NODELIST": nodelist}
        for key, value in env.items():
            monkeypatch.setenv(key, value)

    return on


def test_outside_submitit_nothing_changes(slurm):
    assert node_task() is None and node_rank() == 0


def test_every_node_derives_the_same_rendezvous(slurm):
    tasks = []
    for node in (0, 1):
        slurm(node=node)
        tasks.append(node_task())
    assert [t.node for t in tasks] == [0, 1]
    for task in tasks:
        assert task.nnodes == 2 and task.rdzv_endpoint == "gpu-node07:24242" and task.run_id == "job4242"
    launcher = tasks[1].launcher_config(LauncherConfig())
    assert launcher.nnodes == 2 and launcher.rdzv_endpoint == "gpu-node07:24242"


def test_one_node_keeps_the_local_free_port(slurm):
    slurm(nodes=1, nodelist="gpu-node07")
    task = node_task()
    assert task.rdzv_endpoint == "" and task.launcher_config(LauncherConfig()).nnodes == 1


def test_port_override_and_explicit_endpoint_win(slurm, monkeypatch):
    slurm()
    monkeypatch.setenv("YOLO_DDP_RDZV_PORT", "29555")
    assert node_task().rdzv_endpoint == "gpu-node07:29555"
    given = LauncherConfig(rdzv_endpoint="gpu-node07-ib:29500")
    assert node_task().launcher_config(given).rdzv_endpoint == "gpu-node07-ib:29500"


def test_port_stays_below_the_ephemeral_range():
    assert all(20000 <= rdzv_port(str(j)) < 30000 for j in (0, 9999, 10000, 123456789))
    assert rdzv_port("777_3") == 20000 + 7773  # an array task's id keeps its digits


def test_more_than_one_task_per_node_is_refused(slurm):
    slurm(tasks=16)
    with pytest.raises(ValueError, match="hydra.launcher.tasks_per_node must be 1"):
        node_task()


def test_conflicting_nnodes_names_the_hydra_key():
    with pytest.raises(ValueError, match="hydra.launcher.nodes=4"):
        NodeTask(nnodes=2, node=0, rdzv_endpoint="h:1", run_id="job1").launcher_config(LauncherConfig(nnodes=4))


def test_only_node_zero_writes_hydra_subdir(slurm, monkeypatch):
    monkeypatch.delenv("RANK", raising=False)
    slurm(node=1)
    assert rid.hydra_output_subdir() is None
    slurm(node=0)
    assert rid.hydra_output_subdir() == ".hydra"


def test_sweep_id_and_command_line_reach_submitted_jobs(monkeypatch):
    monkeypatch.setenv("YOLO_DDP_RUN_ID", "2026-01-02/03-04-05")
    monkeypatch.setenv(SWEEP_ARGV_ENV, "")  # restored after the test; empty = this process's argv
    rid.run_id.cache_clear()
    try:
        export_sweep(["launcher", "-m", "train.batch=16,32"])
    finally:
        rid.run_id.cache_clear()
    assert json.loads(os.environ[SWEEP_ARGV_ENV]) == ["-m", "train.batch=16,32"]
    assert sweep_argv() == ["-m", "train.batch=16,32"]


@pytest.mark.usefixtures("hydra_ctx")
def test_slurm_launcher_conf_composes():
    cfg = compose(config_name="config", overrides=["hydra/launcher=slurm", "hydra.launcher.partition=gpu"],
                  return_hydra_config=True)
    launcher = cfg.hydra.launcher
    assert launcher._target_.endswith("SlurmLauncher")
    assert (launcher.nodes, launcher.gpus_per_node, launcher.tasks_per_node) == (2, 8, 1)
    assert launcher.partition == "gpu" and launcher.timeout_min == 240


def test_submitting_from_a_machine_without_gpus_keeps_the_gpu_profile(monkeypatch):
    from launcher.__main__ import _cpu_profile

    monkeypatch.setattr("torch.cuda.is_available", lambda: False)
    argv = ["launcher", "-m", "hydra/launcher=slurm", "train.batch=16,32"]
    assert _cpu_profile(argv) == []  # the jobs run on the allocation's GPU nodes
    local = ["launcher", "-m", "hydra/launcher=submitit_local"]
    assert _cpu_profile(local) == ["train=cpu_quick"]  # submitit_local runs here, on this CPU
