"""The OOM policy without a GPU or a second process: what counts as out of memory, what a single process retries
in place, what an OOM inside a collective records, the time-based checkpoint, and the launcher's OOM restart.
The multi-rank restart end to end is tests/test_oom_restart.py."""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from torch import nn
from torch.distributed import DistBackendError
from torch.distributed.elastic.multiprocessing.errors import ChildFailedError, ProcessFailure

from launcher.job import spawn
from tests.test_ddp import IMGSZ, _batches
from yolo_ddp.config import Config, TrainConfig
from yolo_ddp.engine.faults import StopSignal, after_step_hook
from yolo_ddp.engine.heartbeat import Heartbeat
from yolo_ddp.engine.loop import StepContext, TrainState, train_one_epoch
from yolo_ddp.logging import NullWriter
from yolo_ddp.memory.oom import (
    HINT_FILE,
    OOMGuard,
    OOMUnrecoverable,
    hint_stamp,
    is_out_of_memory,
    read_split_hint,
)
from yolo_ddp.plan import make_plan
from yolo_ddp.schedule import StepSchedule

NCCL_OOM = ("NCCL error in: /pytorch/torch/csrc/distributed/c10d/NCCLUtils.cpp:77, unhandled cuda error (run with "
            "NCCL_DEBUG=INFO for details), NCCL version 2.27.5\nncclUnhandledCudaError: Call to CUDA function failed."
            "\nLast error:\nCuda failure 2 'out of memory'")


def _accelerator_error(code: int) -> torch.AcceleratorError:
    err = torch.AcceleratorError("CUDA error: out of memory")  # torch sets error_code from the cudaError_t
    err.error_code = code
    return err


@pytest.mark.parametrize("err", [
    torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 MiB"),
    RuntimeError("cuDNN error: CUDNN_STATUS_ALLOC_FAILED"),
    RuntimeError("cuDNN error: CUDNN_STATUS_INTERNAL_ERROR_DEVICE_ALLOCATION_FAILED"),
    RuntimeError("cuDNN Frontend error: CUDNN_STATUS_INTERNAL_ERROR_HOST_ALLOCATION_FAILED"),
    RuntimeError("CUDA error: CUBLAS_STATUS_ALLOC_FAILED when calling `cublasCreate(handle)`"),
    DistBackendError(NCCL_OOM),
    DistBackendError(NCCL_OOM.replace("Cuda failure 2 'out", "Cuda failure 'out")),  # older NCCL
    _accelerator_error(2),  # cudaErrorMemoryAllocation
], ids=["torch", "cudnn8", "cudnn9-device", "cudnn9-host", "cublas", "nccl", "nccl-old", "cuda-runtime"])
def test_device_allocation_failures_count_as_oom(err: BaseException) -> None:
    assert is_out_of_memory(err)


@pytest.mark.parametrize("err", [
    RuntimeError("cuDNN error: CUDNN_STATUS_NOT_SUPPORTED. This error may appear if you passed in a non-contiguous "
                 "input."),
    RuntimeError("CUDA error: CUBLAS_STATUS_EXECUTION_FAILED when calling `cublasSgemm( handle, opa, opb, ...)`"),
    DistBackendError(NCCL_OOM.replace("Cuda failure 2 'out of memory'", "Cuda failure 1 'invalid argument'")),
    DistBackendError("NCCL error in: ProcessGroupNCCL.cpp:1, unhandled system error, NCCL version 2.27.5\n"
                     "ncclSystemError: System call (e.g. socket, malloc) or external library call failed or device "
                     "error.\nLast error:\nsocketProgress: Connection closed by remote peer"),
    RuntimeError("DataLoader worker (pid 12) is killed by signal: Killed. out of memory"),  # vague words only
    _accelerator_error(700),  # cudaErrorIllegalAddress: sticky, no smaller batch fixes it
    ValueError("CUBLAS_STATUS_ALLOC_FAILED"),  # not what torch raises
], ids=["cudnn-other", "cublas-other", "nccl-cuda-other", "nccl-system", "vague", "cuda-illegal", "not-runtime"])
def test_other_errors_do_not(err: BaseException) -> None:
    assert not is_out_of_memory(err)


class Flaky(nn.Module):
    """Raises `error` on its first forward, or from the gradient of its weight on the first backward."""

    def __init__(self, error: BaseException, in_backward: bool) -> None:
        super().__init__()
        self.conv, self.error, self.in_backward = nn.Conv2d(3, 4, 3), error, in_backward
        self.forwards = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.forwards += 1
        if self.error is not None and not self.in_backward:
            error, self.error = self.error, None
            raise error
        if self.error is not None:
            error, self.error = self.error, None
            handle = self.conv.weight.register_hook(lambda g: (handle.remove(), _raise(error)))
        return self.conv(x)


def _raise(error: BaseException) -> None:
    raise error


def _criterion(out: torch.Tensor, targets: dict) -> tuple[torch.Tensor, dict]:
    loss = out.float().pow(2).mean() * len(out)
    return torch.stack([loss, loss * 0, loss * 0]), {"box": loss.detach(), "cls": loss * 0, "dfl": loss * 0}


def _one_step(error: BaseException, in_backward: bool) -> tuple[int, int, int]:
    model = Flaky(error, in_backward)
    train = TrainConfig(batch=4, nbs=4, warmup_epochs=0, epochs=1)
    plan = make_plan(train, IMGSZ, 1, "off", "cpu", train_images=4)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    state = TrainState(model=model, raw=model, criterion=_criterion, optimizer=optimizer,
                       scheduler=torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: 1.0),
                       scaler=torch.amp.GradScaler("cpu", enabled=False))
    ctx = StepContext(plan, train, torch.device("cpu"), None, log_every_steps=1)
    guard = OOMGuard(None, retries=1)
    train_one_epoch(state, iter(_batches(0, 1, 4, 1)), ctx, NullWriter(), guard)
    return state.step, guard.splits, model.forwards


@pytest.mark.parametrize("in_backward", [False, True], ids=["forward", "backward"])
def test_a_library_allocation_failure_is_retried_in_place_like_a_torch_oom(in_backward: bool) -> None:
    err = RuntimeError("cuDNN error: CUDNN_STATUS_INTERNAL_ERROR_DEVICE_ALLOCATION_FAILED")
    # The failed micro-step, then the step again in two halves; the same single optimizer step.
    assert _one_step(err, in_backward) == (1, 2, 3)


def test_any_other_runtime_error_still_fails_the_step() -> None:
    with pytest.raises(RuntimeError, match="CUDNN_STATUS_EXECUTION_FAILED"):
        _one_step(RuntimeError("cuDNN error: CUDNN_STATUS_EXECUTION_FAILED"), in_backward=False)


def test_an_oom_inside_a_collective_records_half_the_split_for_the_restart(tmp_path: Path) -> None:
    assert hint_stamp(tmp_path) is None and read_split_hint(tmp_path) == 1
    with pytest.raises(OOMUnrecoverable, match=r"micro-batch \(4\) is recorded in oom_split.json"):
        OOMGuard(tmp_path, retries=3).fail_in_sync(step=7, batch_per_rank=8)
    first = hint_stamp(tmp_path)
    assert json.loads((tmp_path / HINT_FILE).read_text()) == {"splits": 2, "step": 7} and first is not None
    with pytest.raises(OOMUnrecoverable):  # the restarted job, at split 2, runs out again
        OOMGuard(tmp_path, retries=3, splits=2).fail_in_sync(step=9, batch_per_rank=8)
    assert read_split_hint(tmp_path) == 4 and hint_stamp(tmp_path) not in (None, first)
    assert [p.name for p in tmp_path.iterdir()] == [HINT_FILE]  # written atomically: no temp file left
    last = hint_stamp(tmp_path)
    with pytest.raises(OOMUnrecoverable, match="already 1 image"):  # nothing left to halve: no record, no restart
        OOMGuard(tmp_path, retries=3, splits=8).fail_in_sync(step=11, batch_per_rank=8)
    assert hint_stamp(tmp_path) == last


def test_the_time_based_checkpoint_is_agreed_at_the_step_check_and_skips_epoch_ends() -> None:
    guard = OOMGuard(None, retries=0, save_every_s=0.05)
    saves: list[int] = []
    state = SimpleNamespace(step=0)
    after_step = after_step_hook(StopSignal(), guard, Heartbeat(), 0, StepSchedule(4, 1, 0, 1),
                                 lambda: saves.append(state.step))
    for step in (1, 2, 3, 4):  # step 4 ends the epoch, which the epoch loop checkpoints itself
        guard.agreed(False)
        state.step = step
        after_step(state)
        time.sleep(0.06 if step in (1, 3) else 0)
    assert saves == [2]
    assert not OOMGuard(None, retries=0).agreed(False) and not guard.save_due


def _config(tmp_path: Path, **train) -> tuple[Config, Path]:
    config = Config(run_dir=str(tmp_path), train=TrainConfig(**train))
    path = tmp_path / "resolved_config.yaml"
    spawn.write_config(config, path)
    return config, path


def _fake_job(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, outcomes: list[str]) -> list[str]:
    """launch_workers replaced: each call takes the next outcome; `oom` fails after recording a split."""
    seen: list[str] = []

    def launch(config_file: Path, nproc: int, launcher, run_id: str) -> None:
        seen.append(config_file.read_text())
        outcome = outcomes[len(seen) - 1]
        if outcome == "ok":
            return
        if outcome == "oom":
            (tmp_path / "last.pt").write_bytes(b"state")
            with pytest.raises(OOMUnrecoverable):
                OOMGuard(tmp_path, retries=3, splits=read_split_hint(tmp_path)).fail_in_sync(len(seen), 8)
        raise ChildFailedError("launcher.worker", {1: ProcessFailure(1, 0, 1, "<N/A>")})

    monkeypatch.setattr(spawn, "launch_workers", launch)
    return seen


def test_the_launcher_restarts_a_job_an_oom_failed_from_last_pt(monkeypatch, tmp_path, caplog) -> None:
    config, path = _config(tmp_path)
    seen = _fake_job(monkeypatch, tmp_path, ["oom", "oom", "ok"])
    with caplog.at_level(logging.WARNING, logger="launcher"):
        spawn.launch_job(config, path, 2, "run-1")
    assert len(seen) == 3 and "resume: false" in seen[0] and "resume: true" in seen[1]
    assert "OOM restart 1 of 3: a rank ran out of memory inside a collective at optimizer step 1; starting the job " \
           "again from last.pt with each loader batch cut into 2 micro-batches" in caplog.text
    assert "OOM restart 2 of 3" in caplog.text and read_split_hint(tmp_path) == 4


@pytest.mark.parametrize(("outcomes", "restarts", "launches"), [
    (["fail"], 3, 1),  # not an OOM: no record written
    (["oom", "oom"], 1, 2),  # train.oom_restarts used up
    (["oom"], 0, 1),
])
def test_the_launcher_does_not_restart_other_failures_or_past_the_limit(monkeypatch, tmp_path, outcomes, restarts,
                                                                        launches) -> None:
    config, path = _config(tmp_path, oom_restarts=restarts)
    seen = _fake_job(monkeypatch, tmp_path, outcomes)
    with pytest.raises(ChildFailedError):
        spawn.launch_job(config, path, 2, "run-1")
    assert len(seen) == launches


def test_a_record_from_an_earlier_job_is_no_reason_to_restart(monkeypatch, tmp_path) -> None:
    with pytest.raises(OOMUnrecoverable):
        OOMGuard(tmp_path, retries=3).fail_in_sync(3, 8)  # before this launch: a stale record
    config, path = _config(tmp_path)
    seen = _fake_job(monkeypatch, tmp_path, ["fail"])
    with pytest.raises(ChildFailedError):
        spawn.launch_job(config, path, 2, "run-1")
    assert len(seen) == 1
