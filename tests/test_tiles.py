"""`data.tile`: the tiling index (windows, boxes on seams, overlap, small images whole), tiles as samples, and
scoring whole boards from their windows (merged like a whole-image pass, scored by Ultralytics' metric)."""

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
from yolo_ddp.data.dataset import DatasetIndex, build_index
from yolo_ddp.data.image_cache import load_resized, open_store
from yolo_ddp.data.loaders import resolve_backend
from yolo_ddp.data.tiles import board
from yolo_ddp.data.tiles.index import clip_rows, overlap_px, starts, tile_index, windows
from yolo_ddp.data.torch_loader import YoloDataset
from yolo_ddp.engine.evaluate import make_scorer, score_boards

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


def _red_boxes(img: np.ndarray) -> dict[str, torch.Tensor]:
    """A detector whose output depends only on the pixels: every pure-red blob's box, conf from its size."""
    red = ((img[..., 2] == 255) & (img[..., 1] == 0) & (img[..., 0] == 0)).astype(np.uint8)
    n, _, stats, _ = cv2.connectedComponentsWithStats(red, connectivity=4)
    b = np.array([(x, y, x + w, y + h) for x, y, w, h, _ in stats[1:n]], np.float32).reshape(-1, 4)
    conf = 0.3 + (b[:, 2] - b[:, 0]) * 1e-3 + (b[:, 3] - b[:, 1]) * 1e-5
    return {"bboxes": torch.from_numpy(b), "conf": torch.from_numpy(conf), "cls": torch.zeros(len(b))}


def test_merged_tile_detections_equal_the_whole_image_detection() -> None:
    """Objects no larger than the overlap, many across seams: the board's merged windows give the whole-image
    detections exactly; the cut views that `keep_whole` drops are really there."""
    rng = np.random.default_rng(1)
    hw, tile, overlap = (1200, 1600), 640, 0.2
    img = np.full((*hw, 3), (40, 90, 30), np.uint8)
    taken = np.zeros(hw, bool)
    seams = [512, 640, 960, 1024, 1152, 560]  # window edges: objects put across them on purpose
    for k in range(60):
        w, h = (int(v) for v in rng.integers(8, overlap_px(tile, overlap), 2))
        x = int(seams[k % len(seams)] - rng.integers(1, w)) if k % 2 else int(rng.integers(0, hw[1] - w))
        y = int(rng.integers(0, hw[0] - h)) if k % 2 else int(seams[k % 4] - rng.integers(1, h))
        x, y = min(max(x, 0), hw[1] - w), min(max(y, 0), hw[0] - h)
        if not taken[max(y - 2, 0) : y + h + 2, max(x - 2, 0) : x + w + 2].any():
            img[y : y + h, x : x + w] = (0, 0, 255)
            taken[y : y + h, x : x + w] = True
    whole = _red_boxes(img)
    parts, cut_views = [], 0
    for win in windows(hw, tile, overlap):
        x0, y0, x1, y1 = (int(v) for v in win)
        dets = _red_boxes(img[y0:y1, x0:x1])
        dets["bboxes"] = board.to_board(dets["bboxes"], (y1 - y0, x1 - x0), (y1 - y0, x1 - x0),
                                        ((1.0, 1.0), (0, 0)), (x0, y0, x1, y1))
        kept = board.keep_whole(dets, (x0, y0, x1, y1), hw, overlap_px(tile, overlap))
        cut_views += len(dets["conf"]) - len(kept["conf"])
        parts.append(kept)
    merged = board.merge(parts, iou=0.7, max_det=300)
    assert len(whole["conf"]) > 30 and cut_views > 10

    def rows(d: dict) -> list:
        return sorted(map(tuple, torch.cat([d["bboxes"], d["conf"][:, None]], 1).tolist()))

    assert rows(merged) == rows(whole)


def test_tile_boxes_map_back_through_the_letterbox() -> None:
    from ultralytics.data.augment import LetterBox

    window, window_hw = (960, 560, 1600, 960), (400, 640)
    box = torch.tensor([[100.0, 50.0, 130.0, 80.0], [0.0, 0.0, 640.0, 400.0]])  # in window pixels
    for new_shape, auto in ((320, False), ((224, 320), False)):
        p = LetterBox(new_shape=new_shape, auto=auto, scaleup=True).get_params(
            {"img": np.empty((*window_hw, 0), np.uint8)})
        r, left, top = p["ratio"][0], p["left"], p["top"]
        batch_hw = p["new_shape"] if isinstance(p["new_shape"], tuple) else (new_shape, new_shape)
        in_batch = box * r + torch.tensor([left, top, left, top])
        back = board.to_board(in_batch, batch_hw, window_hw, ((r, r), (left, top)), window)
        assert torch.allclose(back, box + torch.tensor([960.0, 560.0, 960.0, 560.0]), atol=1e-3)


def test_board_map_is_ultralytics_metric_on_the_same_detections(tmp_path: Path) -> None:
    from ultralytics.utils.metrics import DetMetrics

    rng = np.random.default_rng(2)
    names = {0: "a", 1: "b", 2: "c"}
    files, shapes, labels, found = [], [], [], {}
    for j in range(4):
        h, w = (1200, 1600) if j % 2 else (900, 700)
        gt = []
        for _ in range(int(rng.integers(0 if j == 3 else 1, 6))):
            bw, bh = (float(v) for v in rng.integers(10, 60, 2))
            x, y = float(rng.integers(0, w - bw)), float(rng.integers(0, h - bh))
            gt.append((int(rng.integers(0, 3)), x, y, x + bw, y + bh))
        dets = [(x0 + rng.normal(0, 2), y0 + rng.normal(0, 2), x1 + rng.normal(0, 2), y1 + rng.normal(0, 2),
                 rng.uniform(0.2, 1), c if rng.random() < 0.8 else (c + 1) % 3) for c, x0, y0, x1, y1 in gt
                if rng.random() < 0.85]
        dets += [(*(lambda x, y: (x, y, x + 30, y + 20))(rng.uniform(0, w - 30), rng.uniform(0, h - 20)),
                  rng.uniform(0.1, 0.6), int(rng.integers(0, 3))) for _ in range(int(rng.integers(0, 3)))]
        d = torch.tensor(dets, dtype=torch.float32).reshape(-1, 6)
        files.append(f"board{j}.png")
        shapes.append((h, w))
        labels.append(np.array([(c, (x0 + x1) / 2 / w, (y0 + y1) / 2 / h, (x1 - x0) / w, (y1 - y0) / h)
                                for c, x0, y0, x1, y1 in gt], np.float32).reshape(-1, 5))
        found[files[-1]] = [{"bboxes": d[:, :4], "conf": d[:, 4], "cls": d[:, 5]}]
    offsets = np.cumsum([0] + [len(x) for x in labels])
    boards = DatasetIndex(files, np.array(shapes), np.concatenate(labels), offsets)
    scorer = make_scorer(names, 0.001, 0.7, 300, tmp_path)
    ours = score_boards(found, boards, scorer, 0.7)

    theirs = make_scorer(names, 0.001, 0.7, 300, tmp_path)  # Ultralytics' own update_metrics and get_stats
    theirs.metrics, theirs.seen, theirs.is_custom_json, theirs.build_gdict = DetMetrics(names=names), 0, False, False
    for j, f in enumerate(files):
        h, w = shapes[j]
        rows = torch.from_numpy(labels[j])
        batch = {"img": torch.zeros((1, 3, h, w), dtype=torch.uint8), "batch_idx": torch.zeros(len(rows)),
                 "cls": rows[:, :1], "bboxes": rows[:, 1:], "ori_shape": [(h, w)], "ratio_pad": [((1.0, 1.0), (0, 0))],
                 "im_file": [f]}
        theirs.update_metrics([board.merge(found[f], 0.7, 300)], batch)
    stats = theirs.get_stats()
    assert ours.images == 4 and ours.instances == sum(len(x) for x in labels)
    assert ours.map50_95 == pytest.approx(stats["metrics/mAP50-95(B)"], abs=1e-9)
    assert ours.map50 == pytest.approx(stats["metrics/mAP50(B)"], abs=1e-9)
    assert 0 < ours.map50_95 < 1


class RedBoxDetector(torch.nn.Module):
    """Raw YOLO-format output (B, 4 + nc, anchors) whose boxes are the red blobs of each (letterboxed) input: a
    detector that is right by construction, so the whole-board path is checked from loader to mAP."""

    def __init__(self, nc: int = 3) -> None:
        super().__init__()
        self.nc = nc

    def forward(self, img: torch.Tensor) -> torch.Tensor:
        out = torch.zeros(len(img), 4 + self.nc, 64)
        for b, x in enumerate(img.float()):
            red = ((x[0] > 0.6) & (x[1] < 0.4) & (x[2] < 0.4)).numpy().astype(np.uint8)
            n, _, stats, _ = cv2.connectedComponentsWithStats(red, connectivity=4)
            for k, (x0, y0, w, h, _) in enumerate(stats[1:n][:64]):
                out[b, :4, k] = torch.tensor([x0 + w / 2, y0 + h / 2, w, h], dtype=torch.float32)
                out[b, 4, k] = 0.9
        return out


def _green_board(tmp_path: Path) -> DatasetIndex:
    """Two 1600x1200 boards and one small image, class-0 red boxes of 20-90 px, several across window seams."""
    d, ld = tmp_path / "ds/images/val", tmp_path / "ds/labels/val"
    d.mkdir(parents=True)
    ld.mkdir(parents=True)
    rng = np.random.default_rng(3)
    for name, (h, w) in (("b0", (1200, 1600)), ("b1", (1200, 1600)), ("s", (300, 400))):
        img = np.full((h, w, 3), (40, 120, 30), np.uint8)
        rows, taken = [], np.zeros((h, w), bool)
        while len(rows) < (3 if name == "s" else 14):
            bw, bh = (int(v) for v in rng.integers(20, 90, 2))
            x, y = int(rng.integers(0, w - bw)), int(rng.integers(0, h - bh))
            if len(rows) % 2 and name != "s":  # across a vertical seam of the 640 / 0.2 windows
                x = min(int(rng.choice([512, 640, 960, 1152])) - bw // 2, w - bw)
            if taken[max(y - 4, 0) : y + bh + 4, max(x - 4, 0) : x + bw + 4].any():
                continue
            img[y : y + bh, x : x + bw] = (0, 0, 255)
            taken[y : y + bh, x : x + bw] = True
            rows.append(f"0 {(x + bw / 2) / w} {(y + bh / 2) / h} {bw / w} {bh / h}")
        cv2.imwrite(str(d / f"{name}.png"), img)
        (ld / f"{name}.txt").write_text("\n".join(rows))
    return build_index([d], nc=3, cache_dir=tmp_path / "cache", split="val")


def _board_eval_worker(rank: int, world: int, port: int, root: str) -> None:
    import json

    import torch.distributed as tdist

    from yolo_ddp.engine.evaluate import make_validation

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world))
    tdist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        index = build_index([Path(root) / "ds/images/val"], nc=3, cache_dir=Path(root) / "cache", split="val")
        scorer = make_scorer({0: "a", 1: "b", 2: "c"}, 0.001, 0.7, 300, Path(root))
        data = DataConfig(path="x", tile=640, imgsz=320, workers=0)
        result = make_validation(data, "torch", index, 2, torch.device("cpu"), rank, world, scorer, None)(
            RedBoxDetector())
        if rank == 0:
            (Path(root) / f"world{world}.json").write_text(json.dumps(
                {"map50": result.map50, "map": result.map50_95, "images": result.images,
                 "instances": result.instances, "whole": result.whole.map50_95}))
    finally:
        tdist.destroy_process_group()


@pytest.mark.slow
def test_boards_scored_from_windows_shared_across_ranks(tmp_path: Path) -> None:
    """Windows predicted by 2 gloo ranks and merged on rank 0 score each board as 1 rank does; with a detector that
    is right by construction every board object is found (mAP50 0.995: Ultralytics' 101-point AP of a perfect
    ranking), though boards are larger than the windows."""
    import json

    import torch.multiprocessing as mp

    from tests.conftest import free_port

    _green_board(tmp_path)
    for world in (1, 2):
        mp.spawn(_board_eval_worker, args=(world, free_port(), str(tmp_path)), nprocs=world, join=True)
    one, two = (json.loads((tmp_path / f"world{w}.json").read_text()) for w in (1, 2))
    assert one == two
    assert one["images"] == 3 and one["instances"] == 31 and one["map50"] > 0.99 and one["map"] > 0.8
