"""`yolo train`'s fraction, classes, single_cls, cls_pw, cls_remap, multi_scale, cache, plots and time, each with
Ultralytics' meaning: checked against its own YOLODataset and trainer functions, and a timed launcher run."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from ultralytics.cfg import get_cfg
from ultralytics.data.dataset import YOLODataset

from tests.conftest import REPO
from tests.red_boxes import make_index
from yolo_ddp.config import DataConfig, ModelConfig, TrainConfig
from yolo_ddp.data.select import class_names, select
from yolo_ddp.engine.checkpoint import save_ultralytics_weights
from yolo_ddp.engine.model import build_model, class_weights
from yolo_ddp.logging.writer import RunWriter
from yolo_ddp.memory.oom import OOMGuard
from yolo_ddp.plan import time_budget_epochs

NAMES = {0: "a", 1: "b", 2: "c"}


def _theirs(d: Path, **kw) -> YOLODataset:
    cfg = get_cfg(overrides={k: v for k, v in kw.items() if k == "fraction"})
    return YOLODataset(img_path=str(d), imgsz=64, augment=False, hyp=cfg, rect=False, stride=32,
                       data={"names": NAMES, "channels": 3}, task="detect", single_cls=kw.get("single_cls", False),
                       classes=kw.get("classes"), fraction=kw.get("fraction", 1.0))


@pytest.mark.parametrize("kw", [{"fraction": 0.5}, {"fraction": 4}, {"classes": [0, 2]}, {"single_cls": True},
                                {"fraction": 0.7, "classes": [1], "single_cls": True}])
def test_selection_keeps_what_ultralytics_dataset_keeps(tmp_path: Path, kw: dict) -> None:
    index = make_index(tmp_path, n=10)
    ours = select(index, DataConfig(path="x", **kw), "train")
    theirs = _theirs(tmp_path / "ds/images/train", **kw)
    assert [Path(f).name for f in ours.im_files] == [Path(f).name for f in theirs.im_files]
    for i, label in enumerate(theirs.labels):
        rows = np.asarray(ours.labels_for(i))
        assert np.array_equal(rows[:, 0], label["cls"].reshape(-1)), i
        assert np.allclose(rows[:, 1:], label["bboxes"], atol=1e-6), i
    assert class_names(DataConfig(path="x", **kw), NAMES) == ({0: "item"} if kw.get("single_cls") else NAMES)


def test_val_split_takes_the_second_fraction_and_bad_selections_are_refused(tmp_path: Path) -> None:
    index = make_index(tmp_path, n=10)
    assert len(select(index, DataConfig(path="x", fraction=0.5), "val")) == 10  # a scalar is the train split's
    assert len(select(index, DataConfig(path="x", fraction=[1.0, 0.3]), "val")) == 3
    with pytest.raises(ValueError, match=r"data.classes.*\[5\]"):
        class_names(DataConfig(path="x", classes=[0, 5]), NAMES)
    for key, bad in (("classes", ["a"]), ("classes", []), ("fraction", 0), ("fraction", 1.5), ("fraction", -2)):
        with pytest.raises(ValueError, match=f"data.{key}"):
            DataConfig(path="x", **{key: bad})
    assert DataConfig(path="x", cache="ram").cache == "ram"  # the node-shared store: tests/test_image_cache.py


def test_cls_pw_weights_are_ultralytics_and_reach_the_loss(tmp_path: Path) -> None:
    index = make_index(tmp_path, n=10)
    counts = np.bincount(np.asarray(index.labels[:, 0], np.int64), minlength=4).astype(np.float32)  # class 3: none
    w = class_weights(index, 4, 0.5, torch.device("cpu"))
    present = counts > 0
    want = np.where(present, (1 / np.where(present, counts, 1)) ** 0.5, 0)
    want[~present] = want[present].mean()
    assert torch.allclose(w, torch.tensor(want / want.mean(), dtype=torch.float32))
    model = build_model(ModelConfig(), {**NAMES, 3: "d"}, TrainConfig(cls_pw=0.5), imgsz=64)
    model.class_weights = w
    assert torch.equal(model.init_criterion().class_weights.view(-1), w)  # v8DetectionLoss multiplies its BCE
    with pytest.raises(ValueError, match="train.cls_pw"):
        TrainConfig(cls_pw=1.5)


def _cls_rows(model) -> torch.Tensor:
    return torch.cat([branch[-1].weight.detach().flatten(1) for branch in model.model[-1].cv3], 1)


@pytest.mark.parametrize("remap", [True, False])
def test_cls_remap_copies_class_rows_by_name(tmp_path: Path, remap: bool) -> None:
    source = build_model(ModelConfig(), {0: "short", 1: "open"}, TrainConfig(), imgsz=64)
    path = tmp_path / "src.pt"
    save_ultralytics_weights(path, source, {}, 1, 0.0, 0)
    ours = build_model(ModelConfig(weights=str(path), cls_remap=remap), {0: "open", 1: "short"}, TrainConfig(),
                       imgsz=64)
    src = _cls_rows(source).half().float()  # Ultralytics saves fp16
    assert ours.names == {0: "open", 1: "short"}
    assert torch.equal(_cls_rows(ours), src[[1, 0]] if remap else src)


def test_multi_scale_float_is_ultralytics_range_and_plots_false_writes_no_png(tmp_path: Path) -> None:
    assert TrainConfig(multi_scale=0.5).multi_scale == [0.5, 1.5]
    assert TrainConfig(multi_scale=0.0).multi_scale == []
    for bad in (1.0, -0.1, [2.0, 3.0]):
        with pytest.raises(ValueError, match="train.multi_scale"):
            TrainConfig(multi_scale=bad)
    writer = RunWriter(tmp_path, plots=False)
    writer.epoch_row({"epoch": 1, "mAP50-95": 0.1})
    assert (tmp_path / "metrics.csv").is_file() and not (tmp_path / "results.png").exists()


def test_time_budget_arithmetic_and_the_agreed_deadline() -> None:
    assert time_budget_epochs(1.0, elapsed_s=600, session_epochs=2, done=2) == 12  # 300 s per epoch into 3600 s
    assert time_budget_epochs(0.01, elapsed_s=600, session_epochs=2, done=2) == 2  # past the budget: ends now
    guard = OOMGuard(None, retries=0)
    assert not guard.agreed(False) and not guard.time_up
    guard.deadline = time.monotonic() - 1
    guard.agreed(False)
    assert guard.time_up
    for bad in (0, -1, True, "1h"):
        with pytest.raises(ValueError, match="train.time"):
            TrainConfig(time=bad)


@pytest.mark.slow
def test_time_bounds_a_run(tmp_path: Path) -> None:
    """train.epochs=1000 with a 3.6 s budget: the run re-estimates its epochs, stops inside the budget's epoch,
    validates and saves a finished last.pt (its plan's epochs are the epochs done)."""
    env = {**os.environ, "YOLO_DDP_OUTPUTS": str(tmp_path / "out"), "CUDA_VISIBLE_DEVICES": "", "YOLO_OFFLINE": "1"}
    proc = subprocess.run(
        [sys.executable, "-m", "launcher", "+experiment=pcb_defects", "train=cpu_quick", "train.epochs=1000",
         "train.time=0.001", "train.val_every=1000", "data.synthetic.n_train=64", "data.synthetic.n_val=4",
         "data.imgsz=64", "train.batch=8", "data.workers=0", "logger=csv", f"data.cache_dir={tmp_path / 'cache'}"],
        capture_output=True, text=True, env=env, timeout=600, cwd=REPO)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    [run_dir] = [p.parent for p in (tmp_path / "out").rglob("metrics.csv")]
    with (run_dir / "metrics.csv").open() as f:
        rows = list(csv.DictReader(f))
    log = (run_dir / "rank0.log").read_text()
    # Re-planned after epoch 1, or (on a loaded machine, epoch 1 alone past 3.6 s) ended inside it: both stop early.
    assert "epochs fit the budget" in log or "h reached after optimizer step" in log
    assert 1 <= len(rows) < 1000 and rows[-1]["mAP50-95"] != ""  # the last epoch is validated
    saved = torch.load(run_dir / "last.pt", map_location="cpu", weights_only=False)
    assert saved["plan"]["epochs"] == saved["epoch"] == len(rows)
    assert json.loads((run_dir / "result.json").read_text())["epoch"] == len(rows)
