"""The training recipe against the installed Ultralytics itself: warmup, LR and momentum per step, accumulation,
optimizer choice and param groups (issue: same recipe, same model as `yolo train`).

The schedule tests run Ultralytics' real DetectionTrainer for a few tiny epochs and record, after every loader
batch, the LR and momentum of every group, its `accumulate` and whether the optimizer stepped (EMA updates).
"""

from __future__ import annotations

import inspect
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from ultralytics.engine.trainer import BaseTrainer

from yolo_ddp.config import ModelConfig, TrainConfig
from yolo_ddp.data.synthetic import materialize
from yolo_ddp.engine.model import build_model
from yolo_ddp.engine.optim import (
    auto_iterations,
    build_optimizer,
    build_scheduler,
    choose_optimizer,
    set_step_momentum,
)
from yolo_ddp.plan import make_plan
from yolo_ddp.schedule import StepSchedule, warmup_batches

NAMES = {0: "a", 1: "b"}


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory) -> Path:
    return materialize(tmp_path_factory.mktemp("recipe") / "pcb", n_train=8, n_val=2, img_size=64)


def ultralytics_trace(data: Path, tmp: Path, **overrides) -> tuple[list[dict], int]:
    """Per loader batch: epoch, lr and momentum per group, accumulate, EMA updates; and its param groups' order."""
    from ultralytics.models.yolo.detect import DetectionTrainer

    args = dict(model="yolov8n.yaml", data=str(data), imgsz=64, device="cpu", workers=0, plots=False, val=False,
                amp=False, project=str(tmp), name="u", exist_ok=True, verbose=False, seed=0, mosaic=0.0)
    trainer = DetectionTrainer(overrides={**args, **overrides})
    rows: list[dict] = []

    def record(t) -> None:
        rows.append({"epoch": t.epoch, "accumulate": t.accumulate, "updates": t.ema.updates,
                     "lr": [g["lr"] for g in t.optimizer.param_groups],
                     "momentum": [g.get("momentum") for g in t.optimizer.param_groups],
                     "groups": [g["param_group"] for g in t.optimizer.param_groups]})

    trainer.add_callback("on_train_batch_end", record)
    trainer.train()
    return rows


def ours(plan_train: TrainConfig, n_images: int, nc: int):
    model = build_model(ModelConfig(cfg="yolov8n.yaml"), {i: str(i) for i in range(nc)}, plan_train, 64)
    plan = make_plan(plan_train, 64, 1, "off", "cpu", n_images)
    choice = choose_optimizer(plan_train, nc, auto_iterations(n_images, plan_train.batch, plan_train.nbs,
                                                              plan_train.epochs))
    optimizer = build_optimizer(model, choice, plan.weight_decay, fused=False)
    return plan, choice, optimizer, build_scheduler(optimizer, plan_train, choice, plan.schedule)


@pytest.mark.slow
@pytest.mark.parametrize("optimizer", ["SGD", "AdamW", "auto", "Adam", "RMSProp", "NAdam"])
def test_lr_and_momentum_per_step_match_ultralytics(tiny_data, tmp_path, optimizer):
    """accumulate 1 (nbs = batch): every batch is a step on both sides, so every step's values compare."""
    recipe = dict(epochs=3, batch=4, nbs=4, warmup_epochs=2.0, lr0=0.01, lrf=0.1, optimizer=optimizer)
    rows = ultralytics_trace(tiny_data, tmp_path, **recipe)
    train = TrainConfig(**recipe)
    plan, choice, opt, sched = ours(train, n_images=8, nc=6)
    assert [g["param_group"] for g in opt.param_groups] == rows[0]["groups"]
    assert len(rows) == plan.total_steps == 6
    for step, row in enumerate(rows):
        set_step_momentum(opt, plan.schedule, step, train)
        assert [g["lr"] for g in opt.param_groups] == pytest.approx(row["lr"], rel=1e-9, abs=1e-12), step
        assert [g.get("momentum") for g in opt.param_groups] == pytest.approx(row["momentum"]), step
        opt.step()
        sched.step()


@pytest.mark.slow
def test_accumulation_ramps_in_warmup_as_ultralytics(tiny_data, tmp_path):
    """batch 2, nbs 8: accumulate ramps 1 -> 4 over the warmup batches, stepping where Ultralytics steps."""
    recipe = dict(epochs=3, batch=2, nbs=8, warmup_epochs=1.0, optimizer="SGD", lr0=0.01)
    rows = ultralytics_trace(tiny_data, tmp_path, **recipe)
    plan = make_plan(TrainConfig(**recipe), 64, 1, "off", "cpu", 8)
    sched = plan.schedule
    assert plan.accumulate == 4 and plan.warmup_batches == 4 and plan.loader_batches_per_epoch == 4
    assert [r["accumulate"] for r in rows] == [sched.accumulate_at(ni) for ni in range(len(rows))]
    # Ultralytics' steps in epoch 0 (its accumulation then carries over the boundary; ours ends the epoch).
    stepped = [ni for ni, r in enumerate(rows[:4]) if r["updates"] > (rows[ni - 1]["updates"] if ni else 0)]
    ends = [sched.last_batch_of(s) for s in range(len(sched.steps_in_epoch(0)))]
    assert ends[: len(stepped)] == stepped
    assert sum(sched.steps_in_epoch(0)) == 4 and all(sum(sched.steps_in_epoch(e)) == 4 for e in range(3))


def test_warmup_leaves_the_last_epoch_as_ultralytics():
    """epochs <= warmup_epochs: Ultralytics caps warmup at epochs - 1, so the LR reaches lr0 * lf(epoch)."""
    for epochs, warm, nb in [(1, 3.0, 10), (2, 3.0, 10), (3, 3.0, 10), (10, 3.0, 7), (5, 0.5, 9), (4, 0.0, 5)]:
        fake = SimpleNamespace(args=SimpleNamespace(warmup_epochs=warm), epochs=epochs)
        assert warmup_batches(warm, epochs, nb) == BaseTrainer._get_warmup_iterations(fake, nb)
    train = TrainConfig(epochs=2, warmup_epochs=3.0, batch=4, nbs=4, optimizer="SGD", lr0=0.01, lrf=0.1)
    plan, _, opt, sched = ours(train, n_images=40, nc=2)
    assert plan.warmup_batches == 10 and plan.total_steps == 20
    for _ in range(plan.total_steps - 1):
        opt.step()
        sched.step()
    assert [g["lr"] for g in opt.param_groups] == pytest.approx([0.01 * (1 - 1 / 2 * 0.9)] * 3)


def test_auto_optimizer_is_ultralytics_rule():
    assert auto_iterations(1000, 16, 64, 100) == 1600  # ceil(1000 / max(16, 64)) * 100
    small = choose_optimizer(TrainConfig(), nc=6, iterations=10_000)
    assert (small.name, small.lr0, small.momentum, small.warmup_bias_lr) == ("AdamW", round(0.01 / 10, 6), 0.9, 0.0)
    big = choose_optimizer(TrainConfig(), nc=6, iterations=10_001)
    assert (big.name, big.lr0, big.momentum, big.warmup_bias_lr) == ("MuSGD", 0.01, 0.9, 0.0)
    named = choose_optimizer(TrainConfig(optimizer="AdamW", lr0=0.002), nc=6, iterations=10)
    assert named.warmup_bias_lr == 0.1  # an explicit optimizer keeps Ultralytics' bias warmup start


def test_musgd_groups_are_ultralytics_own():
    from ultralytics.optim import MuSGD

    model = build_model(ModelConfig(cfg="yolov8n.yaml"), NAMES, TrainConfig(), 64)
    opt = build_optimizer(model, choose_optimizer(TrainConfig(), 2, 20_000), 5e-4)
    assert isinstance(opt, MuSGD)
    groups = {g["param_group"] for g in opt.param_groups}
    assert groups == {"weight", "bn", "bias", "muon"}
    assert {g["lr"] for g in opt.param_groups} == {0.01, 0.03}  # the class head's 3x LR under MuSGD


def test_fused_kernel_keeps_ultralytics_groups():
    model = build_model(ModelConfig(cfg="yolov8n.yaml"), NAMES, TrainConfig(), 64)
    choice = choose_optimizer(TrainConfig(optimizer="SGD"), 2, 100)
    plain, fused = (build_optimizer(model, choice, 5e-4, fused=f) for f in (False, True))
    assert fused.param_groups[0]["fused"] is True and not plain.param_groups[0].get("fused")
    for a, b in zip(plain.param_groups, fused.param_groups, strict=True):
        assert {k: v for k, v in a.items() if k not in ("params", "fused", "foreach")} == \
               {k: v for k, v in b.items() if k not in ("params", "fused", "foreach")}
        assert [id(p) for p in a["params"]] == [id(p) for p in b["params"]]


def test_step_schedule_arithmetic():
    s = StepSchedule(batches_per_epoch=7, accumulate=4, warmup_batches=21, epochs=5)
    assert [s.steps_in_epoch(e) for e in range(5)] == [[1, 1, 1, 1, 2, 1], [2, 2, 3], [3, 4], [4, 3], [4, 3]]
    assert [s.first_step(e) for e in range(6)] == [0, 6, 9, 11, 13, 15] and s.total_steps == 15
    assert [s.epoch_of(i) for i in range(15)] == [0] * 6 + [1] * 3 + [2] * 2 + [3] * 2 + [4] * 2
    assert s.last_batch_of(5) == 6 and s.last_batch_of(14) == 34
    assert s.batches_before(1, 7) == 2 and s.batches_before(0, 6) == 7 and s.batches_before(2, 9) == 0


class _LooseOracle(torch.nn.Module):
    """Each batch's ground truth, every box widened by 3 px: mAP50-95 drops below mAP50."""

    def __init__(self, batches: list[dict], nc: int) -> None:
        super().__init__()
        self.batches, self.nc = list(batches), nc

    def forward(self, img: torch.Tensor) -> torch.Tensor:
        b = self.batches.pop(0)
        h, w = img.shape[2:]
        out = torch.zeros(len(img), 4 + self.nc, 4)
        for si in range(len(img)):
            m = b["batch_idx"] == si
            k = int(m.sum())
            out[si, :4, :k] = (b["bboxes"][m] * torch.tensor([w, h, w, h]) + torch.tensor([0, 0, 3, 3])).T
            out[si, 4 + b["cls"][m].view(-1).long(), torch.arange(k)] = 0.9
        return out


def test_best_pt_fitness_is_ultralytics_detmetrics(tmp_path):
    """8.4's DetMetrics.fitness weights mAP50-95 only; the 0.1/0.9 mix of older releases picks other epochs."""
    from ultralytics.utils.metrics import DetMetrics

    from tests.test_data_parity import NAMES as VAL_NAMES
    from tests.test_data_parity import _val, _val_set
    from yolo_ddp.engine.evaluate import evaluate, make_scorer

    _, idx = _val_set(tmp_path)
    batches = _val("torch", idx)
    result = evaluate(_LooseOracle(batches, len(VAL_NAMES)), batches, make_scorer(VAL_NAMES, 0.001, 0.7, 300, tmp_path),
                      torch.device("cpu"), None)
    assert result.map50_95 < result.map50 - 0.1  # so the two fitness rules disagree
    assert "w = [0.0, 0.0, 0.0, 1.0]" in inspect.getsource(DetMetrics().box.fitness)  # the installed rule
    assert result.fitness == pytest.approx(result.map50_95)
    assert result.fitness != pytest.approx(0.1 * result.map50 + 0.9 * result.map50_95)
