"""LR schedule and param groups; the run id every rank derives on its own."""

from __future__ import annotations

import pytest
import torch

from launcher.job import names as rid
from yolo_ddp.config import TrainConfig
from yolo_ddp.engine.optim import OptimizerChoice, build_optimizer, build_scheduler, lr_lambda
from yolo_ddp.schedule import StepSchedule


def _model():
    return torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4), torch.nn.Conv2d(4, 2, 1))


def test_param_groups_exclude_norm_and_bias_from_decay():
    """Ultralytics' own grouping (BaseTrainer.build_optimizer): decayed weights, norm weights, biases."""
    opt = build_optimizer(_model(), OptimizerChoice("SGD", 0.01, 0.9), weight_decay=0.01)
    groups = {g["param_group"]: g for g in opt.param_groups}
    assert len(groups["weight"]["params"]) == 2 and groups["weight"]["weight_decay"] == 0.01
    assert len(groups["bn"]["params"]) == 1 and groups["bn"]["weight_decay"] == 0.0
    assert len(groups["bias"]["params"]) == 3 and groups["bias"]["weight_decay"] == 0.0


@pytest.mark.parametrize("cos", [False, True])
def test_warmup_then_decay_to_lrf(cos):
    train = TrainConfig(lr0=0.01, lrf=0.1, warmup_bias_lr=0.1, cos_lr=cos)
    choice = OptimizerChoice("SGD", 0.01, 0.9)
    opt = build_optimizer(_model(), choice, 5e-4)
    schedule = StepSchedule(batches_per_epoch=10, accumulate=1, warmup_batches=10, epochs=10)
    sched = build_scheduler(opt, train, choice, schedule)
    lrs = []
    for _ in range(100):
        lrs.append({g["param_group"]: g["lr"] for g in opt.param_groups})
        opt.step()
        sched.step()
    assert lrs[0]["weight"] == 0.0 and lrs[0]["bias"] == pytest.approx(0.1)  # bias falls, weights rise
    assert lrs[10]["weight"] == pytest.approx(lrs[10]["bias"])
    assert lrs[99]["weight"] == pytest.approx(0.01 * lr_lambda(10, 0.1, cos)(9))  # per epoch, toward lrf
    assert lrs[95]["weight"] == lrs[99]["weight"]  # constant within an epoch after warmup


@pytest.fixture
def fresh_run_id(monkeypatch):
    for key in ("YOLO_DDP_RUN_ID", "TORCHELASTIC_RUN_ID"):
        monkeypatch.delenv(key, raising=False)
    rid.run_id.cache_clear()
    yield monkeypatch
    rid.run_id.cache_clear()


def test_run_id_explicit_rendezvous_id_is_shared_by_all_nodes(fresh_run_id):
    fresh_run_id.setenv("TORCHELASTIC_RUN_ID", "pcb-job-42")
    assert rid.run_id() == "pcb-job-42"


def test_run_id_under_plain_torchrun_is_the_agents(fresh_run_id):
    fresh_run_id.setenv("TORCHELASTIC_RUN_ID", "3f2b6c1e-0d9a-4b7e-9c11-2a5d8e7f6b40")
    first = rid.run_id()
    rid.run_id.cache_clear()
    assert rid.run_id() == first  # another rank (same parent agent) computes the same dir
    assert first.endswith("-3f2b6c1e") and first.count("/") == 1


def test_only_rank_zero_writes_hydra_subdir(monkeypatch):
    monkeypatch.setenv("RANK", "1")
    assert rid.hydra_output_subdir() is None
    monkeypatch.setenv("RANK", "0")
    assert rid.hydra_output_subdir() == ".hydra"
