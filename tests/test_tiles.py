"""`data.tile`: the tiling index (windows, boxes on seams, overlap, small images whole) and tiles as samples."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from yolo_ddp.config import DataConfig
from yolo_ddp.data.dataset import build_index
from yolo_ddp.data.image_cache import load_resized, open_store
from yolo_ddp.data.loaders import resolve_backend
from yolo_ddp.data.tiles.index import clip_rows, starts, tile_index, windows
from yolo_ddp.data.torch_loader import YoloDataset

REPO = Path(__file__).resolve().parents[1]


def test_windows_overlap_cover_and_end_flush() -> None:
    assert starts(1600, 640, 0.2) == [0, 512, 960]
    assert starts(1200, 640, 0.2) == [0, 512, 560]
    assert starts(640, 640, 0.2) == starts(300, 640, 0.5) == [0]
    assert starts(700, 640, 0.0) == [0, 60]
    for length, tile, overlap in ((1600, 640, 0.2), (1201, 320, 0.25), (999, 100, 0.0), (5000, 640, 0.5)):
        s = starts(length, tile, overlap)
        assert s[0] == 0 and s[-1] + tile == length  # the last window is flush with the far edge
        gaps = np.diff(s)
        assert (gaps <= tile).all()  # nothing left uncovered
        assert (tile - gaps >= int(tile * overlap)).all()  # neighbours share at least the overlap
    w = windows((1200, 1600), 640, 0.2)
    assert len(w) == 9 and (w[:, 2] - w[:, 0] == 640).all() and (w[:, 3] - w[:, 1] == 640).all()
    assert windows((300, 1000), 640, 0.2).tolist() == [[0, 0, 640, 300], [360, 0, 1000, 300]]  # short side whole
    assert windows((480, 640), 640, 0.2).tolist() == [[0, 0, 640, 480]]  # no larger than a tile: whole


def _row(cls: int, x0: float, y0: float, x1: float, y1: float, w: int = 1600, h: int = 1200) -> np.ndarray:
    return np.array([[cls, (x0 + x1) / 2 / w, (y0 + y1) / 2 / h, (x1 - x0) / w, (y1 - y0) / h]], np.float32)


def test_boxes_on_seams_are_clipped_and_kept_by_visible_area() -> None:
    hw = (1200, 1600)
    seam = _row(2, 500, 100, 560, 130)  # 60 px wide; window 512..1152 holds its last 48 px (0.8 of it)
    whole, cut = clip_rows(seam, hw, np.array([0, 0, 640, 640]), 0.5)
    assert cut == 0 and np.allclose(whole, [[2, 530 / 640, 115 / 640, 60 / 640, 30 / 640]], atol=1e-6)
    part, cut = clip_rows(seam, hw, np.array([512, 0, 1152, 640]), 0.5)
    assert cut == 0 and np.allclose(part, [[2, 24 / 640, 115 / 640, 48 / 640, 30 / 640]], atol=1e-6)
    dropped, cut = clip_rows(seam, hw, np.array([512, 0, 1152, 640]), 0.9)
    assert len(dropped) == 0 and cut == 1  # 0.8 visible < 0.9: dropped there, counted
    away, cut = clip_rows(seam, hw, np.array([960, 560, 1600, 1200]), 0.5)
    assert len(away) == 0 and cut == 0  # not in that window at all: nothing to count


def _board(tmp_path: Path) -> Path:
    """A 1600x1200 board with red boxes (one on a seam) and a 300x400 image that stays whole."""
    d, ld = tmp_path / "ds/images/train", tmp_path / "ds/labels/train"
    d.mkdir(parents=True)
    ld.mkdir(parents=True)
    rng = np.random.default_rng(0)
    board = rng.integers(0, 255, (1200, 1600, 3), np.uint8)  # texture, so every crop differs
    boxes = [(0, 100, 100, 140, 130), (1, 500, 300, 560, 330), (2, 1500, 1100, 1580, 1180)]
    for _, x0, y0, x1, y1 in boxes:
        board[y0:y1, x0:x1] = (0, 0, 255)
    cv2.imwrite(str(d / "board.png"), board)
    (ld / "board.txt").write_text("\n".join(" ".join(map(str, _row(*b)[0])) for b in boxes))
    cv2.imwrite(str(d / "small.png"), rng.integers(0, 255, (300, 400, 3), np.uint8))
    (ld / "small.txt").write_text("0 0.5 0.5 0.2 0.2")
    return d


def test_the_tiled_index_and_its_samples(tmp_path: Path) -> None:
    d = _board(tmp_path)
    index = build_index([d], nc=3, cache_dir=tmp_path / "cache", split="train")
    tiled, report = tile_index(index, 640, 0.2, 0.5)
    board, small = (index.im_files.index(str(d / n)) for n in ("board.png", "small.png"))
    n_board = len(windows((1200, 1600), 640, 0.2))
    assert len(tiled) == n_board + 1 and report.tiled == 1 and report.samples == len(tiled)
    assert tiled.im_files.count(str(d / "small.png")) == 1
    whole = tiled.im_files.index(str(d / "small.png"))
    assert tiled.window(whole) == (0, 0, 400, 300) and tiled.shapes[whole].tolist() == [300, 400]
    assert np.allclose(tiled.labels_for(whole), index.labels_for(small))
    # The seam box (x 500..560) lies whole in the first column and 48/60 inside the second: kept in both; the
    # corner box (y 1100..1180) whole in the last row and 52/80 inside the middle one: both; +1 each other box.
    assert report.boxes_in == 4 and report.boxes_out == 6 and report.cut_dropped == 0
    assert report.boxes_out == len(tile_index(index, 640, 0.2, 0.7)[0].labels) + 1  # 0.65 < 0.7: one dropped
    # A tile sample is the window cropped from the decoded image, then Ultralytics' load_image resize.
    src = cv2.imread(str(d / "board.png"))
    ds = YoloDataset(tiled, 320, augment=False)
    for i in range(n_board):
        x0, y0, x1, y1 = tiled.window(i)
        img, hw0 = ds.load_image(i)
        assert hw0 == (y1 - y0, x1 - x0)
        assert np.array_equal(img, cv2.resize(src[y0:y1, x0:x1], (320, 320), interpolation=cv2.INTER_LINEAR))
    # The node's image store holds the windows, keyed by them.
    store = open_store(tiled.im_files, tiled.shapes, 320, "disk", tmp_path / "cache", "train", tiled.windows)
    assert len(store) == len(tiled)
    for i in range(len(tiled)):
        assert np.array_equal(store.image(i)[0], load_resized(tiled.im_files[i], 320, tiled.window(i))[0])
    assert index.windows is None and len(index) == 2 and board != small  # the source index is left as it was


def test_dali_refuses_tiles_and_auto_picks_torch() -> None:
    with pytest.raises(ValueError, match=r"data.tile=640.*data.backend=torch"):
        resolve_backend(DataConfig(backend="dali", tile=640), torch.device("cpu"))
    assert resolve_backend(DataConfig(tile=640), torch.device("cuda", 0)) == "torch"
    for key, bad in (("tile", 16), ("tile_overlap", 1.0), ("tile_min_visible", 0.0)):
        with pytest.raises(ValueError, match=f"data.{key}"):
            DataConfig(**{key: bad})


@pytest.mark.slow
def test_a_tiled_run_trains_on_windows(tmp_path: Path) -> None:
    _board(tmp_path)
    (tmp_path / "ds/data.yaml").write_text("path: .\ntrain: images/train\nval: images/train\nnames: [a, b, c]\n")
    env = {**os.environ, "YOLO_DDP_OUTPUTS": str(tmp_path / "out"), "CUDA_VISIBLE_DEVICES": ""}
    proc = subprocess.run(
        [sys.executable, "-m", "launcher", "+experiment=pcb_defects", f"data.path={tmp_path / 'ds/data.yaml'}",
         "train=cpu_quick", "train.epochs=1", "data.imgsz=128", "data.tile=640", "train.batch=4", "data.workers=0",
         "logger=csv", f"data.cache_dir={tmp_path / 'cache'}"],
        capture_output=True, text=True, env=env, timeout=600, cwd=REPO)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    [log] = (tmp_path / "out").rglob("rank0.log")
    assert "data.tile=640 (overlap 0.2, min visible 0.5): 2 train images -> 10 samples" in log.read_text()
