"""The self-spawning launcher gives its workers the environment torchrun would."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from launcher.job import spawn
from yolo_ddp.config import LauncherConfig


def worker_env(monkeypatch: pytest.MonkeyPatch, nproc: int, omp: str | None) -> dict[str, str]:
    """The environment the workers would inherit: elastic_launch's entry is where they start."""
    env = {k: v for k, v in os.environ.items() if k != "OMP_NUM_THREADS"}
    if omp is not None:
        env["OMP_NUM_THREADS"] = omp
    monkeypatch.setattr(os, "environ", env)
    seen: dict[str, str] = {}

    def launch(config, entrypoint):
        assert config.nproc_per_node == nproc
        return lambda *args: seen.update(os.environ)

    monkeypatch.setattr(spawn, "elastic_launch", launch)
    spawn.launch_workers(Path("job.yaml"), nproc, LauncherConfig(), "run-1")
    return seen


def test_several_workers_get_one_omp_thread_each_as_under_torchrun(monkeypatch: pytest.MonkeyPatch) -> None:
    assert worker_env(monkeypatch, 2, None)["OMP_NUM_THREADS"] == "1"


def test_a_users_omp_setting_and_a_single_worker_are_left_alone(monkeypatch: pytest.MonkeyPatch) -> None:
    assert worker_env(monkeypatch, 4, "6")["OMP_NUM_THREADS"] == "6"
    assert "OMP_NUM_THREADS" not in worker_env(monkeypatch, 1, None)
