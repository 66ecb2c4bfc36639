"""data.sampler=balanced: YOLOv5's image weights under DDP. Every rank draws the same weighted epoch and takes
disjoint positions of it; a mid-epoch resume continues the draw; the epoch's boxes per class reach metrics.csv."""

from __future__ import annotations

import csv
import itertools
import os
import subprocess
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch

from tests.conftest import REPO
from tests.red_boxes import make_index
from yolo_ddp.config import DataConfig
from yolo_ddp.data.balance import epoch_draw, image_weights, instances_seen, rank_shard
from yolo_ddp.data.dataset import DatasetIndex
from yolo_ddp.data.loaders import resolve_backend
from yolo_ddp.data.torch_loader import EpochBatchSampler
from yolo_ddp.plan import loader_batches_per_epoch


def _index(classes: list[list[int]]) -> DatasetIndex:
    rows = [np.array([[c, 0.5, 0.5, 0.1, 0.1] for c in cs], np.float32).reshape(-1, 5) for cs in classes]
    offsets = np.concatenate([[0], np.cumsum([len(r) for r in rows])]).astype(np.int64)
    return DatasetIndex([f"{i}.jpg" for i in range(len(rows))], np.full((len(rows), 2), 64, np.int32),
                        np.concatenate(rows), offsets)


# 18 images of class 0, 2 of class 1 (10% of the boxes), 1 background
IMBALANCED = [[0]] * 18 + [[1]] * 2 + [[]]


def test_weights_follow_inverse_class_frequency() -> None:
    w = image_weights(_index(IMBALANCED), nc=2)
    assert np.allclose(w[:18], 1 / 18) and np.allclose(w[18:20], 1 / 2) and np.isclose(w[20], 1 / 18)
    names = {0: "common", 1: "rare"}
    drawn = [instances_seen(_index(IMBALANCED), epoch_draw(w, seed=0, epoch=e), names)["seen_rare"] for e in range(20)]
    assert np.mean(drawn) > 5 * 2  # about half the draw, against 2 of 21 images uniformly


@pytest.mark.parametrize("world", [2, 3])
def test_ranks_draw_the_same_epoch_and_take_disjoint_positions(world: int) -> None:
    w = image_weights(_index(IMBALANCED), nc=2)
    n, batch = len(w), 4
    samplers = [iter(EpochBatchSampler(n, batch, r, world, seed=7, weights=w)) for r in range(world)]
    bpe = loader_batches_per_epoch(n, world, batch)
    for epoch in range(2):
        shards = [[i for b in itertools.islice(s, bpe) for i, e, _ in b if e == epoch] for s in samplers]
        draw = epoch_draw(w, 7, epoch)
        assert shards == [rank_shard(draw, r, world) for r in range(world)]
        together = [x for group in itertools.zip_longest(*shards) for x in group if x is not None]
        assert Counter(together) == Counter(draw + draw[: len(together) - n])  # the draw, padded from its start
    assert epoch_draw(w, 7, 0) != epoch_draw(w, 7, 1)


def test_a_mid_epoch_resume_continues_the_same_draw() -> None:
    w = image_weights(_index(IMBALANCED), nc=2)
    whole = list(itertools.islice(iter(EpochBatchSampler(21, 4, 1, 2, seed=3, weights=w)), 6))  # 3 per epoch
    resumed = list(itertools.islice(iter(EpochBatchSampler(21, 4, 1, 2, seed=3, start_batch=2, weights=w)), 4))
    assert resumed == whole[2:]


def test_dali_refuses_the_balanced_sampler() -> None:
    with pytest.raises(ValueError, match=r"data\.sampler=balanced.*data\.backend=torch"):
        resolve_backend(DataConfig(backend="dali", sampler="balanced"), torch.device("cpu"))
    assert resolve_backend(DataConfig(sampler="balanced"), torch.device("cuda", 0)) == "torch"
    with pytest.raises(ValueError, match="data.sampler"):
        DataConfig(sampler="weighted")


@pytest.mark.slow
def test_a_balanced_run_logs_the_boxes_each_class_was_seen(tmp_path: Path) -> None:
    env = {**os.environ, "YOLO_DDP_OUTPUTS": str(tmp_path / "out"), "CUDA_VISIBLE_DEVICES": "", "YOLO_OFFLINE": "1"}
    make_index(tmp_path, n=12)  # a YOLO-format split with classes 0-2
    (tmp_path / "ds/data.yaml").write_text("path: .\ntrain: images/train\nval: images/train\nnames: [a, b, c]\n")
    proc = subprocess.run(
        [sys.executable, "-m", "launcher", "+experiment=pcb_defects", f"data.path={tmp_path / 'ds/data.yaml'}",
         "data.sampler=balanced", "train=cpu_quick", "train.epochs=2", "train.val_every=1", "data.imgsz=64",
         "train.batch=4", "data.workers=0", "logger=csv", "launcher.nproc_per_node=2",
         f"data.cache_dir={tmp_path / 'cache'}"],
        capture_output=True, text=True, env=env, timeout=600, cwd=REPO)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    [metrics] = (tmp_path / "out").rglob("metrics.csv")
    rows = list(csv.DictReader(metrics.open()))
    assert len(rows) == 2 and all(int(r["seen_a"]) + int(r["seen_b"]) + int(r["seen_c"]) > 0 for r in rows)
