"""The torch backend's training samples are Ultralytics' own: same seed, same pixels and boxes as its YOLODataset.

Covers every `yolo train` augmentation (mosaic, mixup, cutmix, degrees, shear, perspective, translate, scale, HSV,
both flips, bgr), in mosaic epochs and after `close_mosaic`; and the DALI backend's refusal of those it lacks.
"""

from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import pytest
import torch
from ultralytics.cfg import get_cfg
from ultralytics.data.dataset import YOLODataset

from tests.red_boxes import make_index
from yolo_ddp.config import DataConfig
from yolo_ddp.data.loaders import resolve_backend
from yolo_ddp.data.torch_loader import YoloDataset, mosaic_buffer_size

S = 128
N = 10
EVERYTHING = {"mosaic": 1.0, "mixup": 0.5, "cutmix": 0.5, "degrees": 10.0, "shear": 4.0, "perspective": 0.0005,
              "translate": 0.2, "scale": 0.4, "hsv_h": 0.02, "hsv_s": 0.6, "hsv_v": 0.3, "flipud": 0.5, "fliplr": 0.5,
              "bgr": 0.5}


def _ultralytics(d: Path, hyp: dict, closed: bool) -> YOLODataset:
    cfg = get_cfg(overrides=hyp)
    ds = YOLODataset(img_path=str(d), imgsz=S, batch_size=16, augment=True, hyp=cfg, rect=False, stride=32,
                     data={"names": {0: "a", 1: "b", 2: "c"}, "channels": 3}, task="detect")
    if closed:
        ds.close_mosaic(cfg)  # what its trainer calls `close_mosaic` epochs before the end
    return ds


def _same_sample(ours: dict, theirs: dict) -> None:
    assert torch.equal(ours["img"], theirs["img"])
    assert torch.allclose(ours["bboxes"], theirs["bboxes"], atol=1e-6)
    assert torch.equal(ours["cls"], theirs["cls"])


@pytest.mark.parametrize("closed", [False, True], ids=["mosaic-epochs", "after-close-mosaic"])
def test_every_augmentation_matches_ultralytics_for_the_same_seed(tmp_path: Path, closed: bool) -> None:
    index = make_index(tmp_path, n=N)
    ours = YoloDataset(index, S, augment=True, mosaic_until=1, **EVERYTHING)
    ours.buffer_size = mosaic_buffer_size(N, 16)  # what build_loader sets: Ultralytics' bound for batch 16
    theirs = _ultralytics(tmp_path / "ds/images/train", EVERYTHING, closed)
    assert [Path(f).name for f in theirs.im_files] == [Path(f).name for f in index.im_files]
    epoch = 1 if closed else 0  # ours closes the mosaic from epoch `mosaic_until` on
    # More images than the buffer holds: partners come from the same pool, evicted by the same rule.
    for seed, i in enumerate([3, 0, 7, 3, 5, 1, 9, 2, 8, 4, 6, 0, 3, 7]):
        random.seed(seed)
        np.random.seed(seed)
        a = ours[(i, epoch)]
        random.seed(seed)
        np.random.seed(seed)
        b = theirs[i]
        _same_sample(a, b)


def test_dali_refuses_what_it_lacks_and_auto_picks_torch() -> None:
    data = DataConfig(backend="dali", degrees=5.0, mixup=0.1)
    with pytest.raises(ValueError, match=r"data\.degrees=5\.0, data\.mixup=0\.1.*data\.backend=torch"):
        resolve_backend(data, torch.device("cpu"))
    assert resolve_backend(DataConfig(backend="auto", flipud=0.5), torch.device("cuda", 0)) == "torch"
