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
