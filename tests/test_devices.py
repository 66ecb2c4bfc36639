"""Device checks before any process group starts: NCCL needs a GPU, every rank needs its own GPU."""

from __future__ import annotations

import pytest
import torch

from yolo_ddp import dist


def gpus(monkeypatch: pytest.MonkeyPatch, n: int) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: n > 0)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: n)


def test_nccl_without_a_gpu_names_the_key_and_the_fix(monkeypatch: pytest.MonkeyPatch) -> None:
    gpus(monkeypatch, 0)
    with pytest.raises(ValueError, match=r"dist\.backend=nccl needs CUDA GPUs.*dist\.backend=auto") as err:
        dist.check_devices("nccl", 1)
    assert "\n" not in str(err.value)
    for backend in ("auto", "gloo"):
        dist.check_devices(backend, 8)  # CPU ranks are not tied to devices


def test_more_processes_than_gpus(monkeypatch: pytest.MonkeyPatch) -> None:
    gpus(monkeypatch, 2)
    for backend in ("auto", "nccl", "gloo"):
        with pytest.raises(ValueError, match=r"launcher\.nproc_per_node.*3 processes.*2 GPU\(s\).*at most 2"):
            dist.check_devices(backend, 3)
    dist.check_devices("nccl", 2)


def test_worker_refuses_before_the_group_starts(monkeypatch: pytest.MonkeyPatch) -> None:
    gpus(monkeypatch, 0)
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "1")
    monkeypatch.setattr(torch.distributed, "init_process_group", lambda **_: pytest.fail("group started"))
    with pytest.raises(ValueError, match="dist.backend=nccl"):
        dist.init_process_group(60.0, "nccl")
