"""Every model in conf/model builds from its yaml with the data's classes; local weights load, nothing downloads."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import yaml

from tests.conftest import CONF
from yolo_ddp.config import ModelConfig, TrainConfig
from yolo_ddp.engine.model import build_model, loss_criterion

NAMES = {0: "missing_hole", 1: "short", 2: "spur"}
MODELS = sorted(p.stem for p in (CONF / "model").glob("*.yaml"))


@pytest.mark.parametrize("name", MODELS)
def test_model_conf_builds_with_data_classes(name):
    cfg = ModelConfig(**yaml.safe_load((CONF / "model" / f"{name}.yaml").read_text()))
    model = build_model(cfg, NAMES, TrainConfig(), imgsz=64)
    assert model.nc == 3 and model.names == NAMES
    assert model.model[-1].nc == 3


def test_loss_runs_on_a_batch():
    model = build_model(ModelConfig(), NAMES, TrainConfig(), imgsz=64)
    batch = {"batch_idx": torch.tensor([0.0, 1.0]), "cls": torch.tensor([[0.0], [2.0]]),
             "bboxes": torch.tensor([[0.5, 0.5, 0.2, 0.2], [0.3, 0.3, 0.1, 0.2]])}
    loss, items = loss_criterion(model)(model(torch.rand(2, 3, 64, 64)), batch)
    assert loss.shape == (3,) and torch.isfinite(loss).all() and len(items) == 3


def test_local_weights_initialise_the_model(tmp_path: Path):
    source = build_model(ModelConfig(), NAMES, TrainConfig(), imgsz=64)
    torch.save({"model": source.half(), "train_args": {}}, tmp_path / "w.pt")  # Ultralytics' layout
    target = build_model(ModelConfig(weights=str(tmp_path / "w.pt")), NAMES, TrainConfig(), imgsz=64)
    for a, b in zip(source.state_dict().values(), target.state_dict().values(), strict=True):
        assert torch.allclose(a.float(), b.float())


def test_missing_weights_name_the_key(tmp_path: Path):
    with pytest.raises(FileNotFoundError, match=r"model\.weights.*Nothing is downloaded"):
        build_model(ModelConfig(weights=str(tmp_path / "yolov8n.pt")), NAMES, TrainConfig(), imgsz=64)


def test_yolo26_loss_schedule_follows_ultralytics_trainer_and_resumes():
    """E2ELoss decays its one-to-many weight over the run's epochs: Ultralytics' trainer calls `update()` after
    every epoch and, on resume, sets `updates` to the completed epochs. set_criterion_epoch must give the same
    weights after every epoch, and a fresh criterion set to epoch k (a resume) the same as k updates."""
    from ultralytics.utils.loss import E2ELoss

    from yolo_ddp.engine.model import set_criterion_epoch

    epochs = 10
    model = build_model(ModelConfig(cfg="yolo26n.yaml"), NAMES, TrainConfig(epochs=epochs), imgsz=64)
    ours, theirs = loss_criterion(model), E2ELoss(model)  # theirs: as Ultralytics' trainer drives it
    assert isinstance(ours, E2ELoss) and ours.o2m == 0.8
    seen = []
    for epoch in range(1, epochs + 1):
        set_criterion_epoch(ours, epoch)
        theirs.update()
        assert (ours.o2m, ours.o2o, ours.updates) == (theirs.o2m, theirs.o2o, theirs.updates)
        resumed = loss_criterion(model)
        set_criterion_epoch(resumed, epoch)
        assert (resumed.o2m, resumed.o2o) == (theirs.o2m, theirs.o2o)
        seen.append(round(ours.o2m, 4))
    assert seen[0] < 0.8 and seen[-2] == pytest.approx(0.1) and seen == sorted(seen, reverse=True)


def test_a_loss_without_a_schedule_is_left_alone():
    from yolo_ddp.engine.model import set_criterion_epoch

    criterion = loss_criterion(build_model(ModelConfig(), NAMES, TrainConfig(), imgsz=64))
    set_criterion_epoch(criterion, 3)
    assert not hasattr(criterion, "updates")


def test_yolo26_says_why_its_loss_is_normalised_per_forward():
    from yolo_ddp.engine.loss_norm import LossNormaliser

    e2e = loss_criterion(build_model(ModelConfig(cfg="yolo26n.yaml"), NAMES, TrainConfig(), imgsz=64))
    norm = LossNormaliser(e2e, "global", torch.device("cpu"))
    assert not norm.exact and "per forward, as Ultralytics" in norm.describe() and "end-to-end" in norm.describe()
    v8 = LossNormaliser(loss_criterion(build_model(ModelConfig(), NAMES, TrainConfig(), imgsz=64)), "global",
                        torch.device("cpu"))
    assert v8.exact and v8.describe() == "per step (train.loss_norm=global)"
