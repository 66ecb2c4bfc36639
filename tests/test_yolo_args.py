"""`yolo train` arguments with Ultralytics' meaning, checked against the installed Ultralytics itself: `freeze`
freezes the parameters its trainer freezes, `patience` stops at the epoch its EarlyStopping stops at, and
`save_period` keeps the epoch checkpoints its trainer keeps."""

from __future__ import annotations

import csv
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from ultralytics.utils.torch_utils import EarlyStopping

from tests.conftest import REPO
from yolo_ddp.config import ModelConfig, TrainConfig
from yolo_ddp.data.synthetic import materialize
from yolo_ddp.engine.model import build_model, freeze_layers

NAMES = {0: "a", 1: "b"}


class Recorded(Exception):
    pass


def ultralytics_frozen(data: Path, tmp: Path, model: str, freeze) -> list[str]:
    """The parameters Ultralytics' own DetectionTrainer leaves frozen after its `_setup_train`."""
    from ultralytics.models.yolo.detect import DetectionTrainer

    trainer = DetectionTrainer(overrides=dict(model=model, data=str(data), imgsz=64, device="cpu", workers=0,
                                              plots=False, amp=False, project=str(tmp), name="u", exist_ok=True,
                                              verbose=False, freeze=freeze, epochs=1))
    seen: list[str] = []

    def record(t) -> None:
        seen.extend(k for k, v in t.model.named_parameters() if not v.requires_grad)
        raise Recorded

    trainer.add_callback("on_pretrain_routine_end", record)
    with pytest.raises(Recorded):
        trainer.train()
    return seen


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory) -> Path:
    return materialize(tmp_path_factory.mktemp("args") / "pcb", n_train=4, n_val=2, img_size=64)


@pytest.mark.parametrize(("model", "freeze"), [("yolov8n.yaml", None), ("yolov8n.yaml", 3),
                                               ("yolov8n.yaml", [0, 4, 22]), ("yolo26n.yaml", 10)])
def test_freeze_freezes_what_ultralytics_freezes(tiny_data, tmp_path, model, freeze):
    ours = build_model(ModelConfig(cfg=model), NAMES, TrainConfig(), imgsz=64)
    frozen = freeze_layers(ours, freeze)
    assert frozen == [k for k, v in ours.named_parameters() if not v.requires_grad]
    assert frozen == ultralytics_frozen(tiny_data, tmp_path, model, freeze)
    if freeze:
        assert any(k.startswith("model.0.") for k in frozen)


def test_freezing_everything_and_bad_values_are_refused():
    model = build_model(ModelConfig(), NAMES, TrainConfig(), imgsz=64)
    with pytest.raises(ValueError, match="train.freeze.*froze the whole model"):
        freeze_layers(model, 100)
    for bad in (-1, "backbone", [0, "x"], True):
        with pytest.raises(ValueError, match="train.freeze"):
            TrainConfig(freeze=bad)
    with pytest.raises(ValueError, match="train.patience"):
        TrainConfig(patience=-1)


FITNESS = [0.0, 0.1, 0.3, 0.25, 0.32, 0.28, 0.35, 0.2, 0.1, 0.1, 0.1, 0.1]  # scripted (tests/fitness_inject)


@pytest.mark.slow
def test_patience_stops_where_ultralytics_early_stopping_stops_and_save_period_keeps_epochs(tmp_path):
    epochs, patience = len(FITNESS), 2
    env = {**os.environ, "YOLO_DDP_OUTPUTS": str(tmp_path / "out"), "CUDA_VISIBLE_DEVICES": "", "YOLO_OFFLINE": "1",
           "PYTHONPATH": os.pathsep.join([str(Path(__file__).parent / "fitness_inject"), str(REPO)]),
           "YOLO_DDP_TEST_FITNESS": ",".join(map(str, FITNESS))}
    stopper = EarlyStopping(patience=patience)  # Ultralytics' own, fed the same fitness sequence
    expected = next(e for e, f in enumerate(FITNESS, 1) if stopper(e, f))
    assert expected == 9  # best 0.35 at epoch 7, then two epochs without improvement
    proc = subprocess.run(
        [sys.executable, "-m", "launcher", "+experiment=pcb_defects", "train=cpu_quick", f"train.epochs={epochs}",
         f"train.patience={patience}", "train.save_period=2", "train.val_every=1", "data.synthetic.n_train=16",
         "data.synthetic.n_val=8", "data.imgsz=64", "train.batch=8", "data.workers=0", "logger=csv",
         f"data.cache_dir={tmp_path / 'cache'}"],
        capture_output=True, text=True, env=env, timeout=600, cwd=REPO)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    [run_dir] = [p.parent for p in (tmp_path / "out").rglob("metrics.csv")]
    with (run_dir / "metrics.csv").open() as f:
        logged = [float(r["mAP50-95"]) for r in csv.DictReader(f)]
    assert logged == FITNESS[:expected]
    assert "early stop (train.patience=2)" in (run_dir / "rank0.log").read_text()
    assert sorted(p.name for p in run_dir.glob("epoch*.pt")) == ["epoch2.pt", "epoch4.pt", "epoch6.pt", "epoch8.pt"]
    saved = torch.load(run_dir / "last.pt", map_location="cpu", weights_only=False)
    assert saved["stopper"] == {"best_fitness": 0.35, "best_epoch": 7}  # what a resume counts patience from
