"""Both data backends produce what Ultralytics' trainer and validator produce.

Training: every image every epoch (DistributedSampler(drop_last=False) shards, a short last batch), and
RandomPerspective's scale/translate also without mosaic. Validation: Ultralytics' rectangular batches (order,
shapes, boxes) spread over ranks, and no ground truth dropped.
"""

from __future__ import annotations

import itertools
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from ultralytics.cfg import get_cfg
from ultralytics.data.dataset import YOLODataset

from tests.red_boxes import make_index, xyxy_px
from yolo_ddp.config import DaliConfig, DataConfig
from yolo_ddp.data.dataset import DatasetIndex, build_index
from yolo_ddp.data.loaders import build_train_stream, build_val_loader
from yolo_ddp.engine.evaluate import evaluate, make_scorer
from yolo_ddp.logging.preview import ValPreview
from yolo_ddp.plan import loader_batches_per_epoch

pytest.importorskip("nvidia.dali")
BACKENDS = ["torch", "dali"]
CPU = torch.device("cpu")
S = 128  # val image size
VB = 3  # val batch size
# (h, w): landscape, portrait, square, enlarged (48x64) and shrunk (200x150) ones, so batches differ in shape.
VAL_SHAPES = [(96, 128), (128, 96), (128, 128), (48, 64), (200, 150), (100, 60), (128, 96), (60, 100)]
NAMES = {0: "red", 1: "thin"}


def _data(backend: str, **kw) -> DataConfig:
    return DataConfig(backend=backend, workers=0, dali=DaliConfig(threads=1), **kw)


def _train(backend: str, idx: DatasetIndex, batch: int, rank: int, world: int, start_epoch: int = 0,
           start_batch: int = 0, **kw):
    kw = {"imgsz": 64, "mosaic": 0.0, **kw}
    bpe = loader_batches_per_epoch(len(idx), world, batch)
    return build_train_stream(_data(backend, **kw), backend, idx, batch, bpe, 100, 1, CPU, rank, world,
                              start_epoch=start_epoch, start_batch=start_batch)


def _val(backend: str, idx: DatasetIndex, rank: int = 0, world: int = 1, rect: bool = True) -> list[dict]:
    return list(build_val_loader(_data(backend, imgsz=S, val_rect=rect), backend, idx, VB, CPU, rank, world))


def _val_set(tmp_path: Path) -> tuple[Path, DatasetIndex]:
    """A YOLO-format val split: a red rectangle labelled 0, and a 1-px-wide box labelled 1, per image."""
    d, ld = tmp_path / "ds/images/val", tmp_path / "ds/labels/val"
    d.mkdir(parents=True)
    ld.mkdir(parents=True)
    for i, (h, w) in enumerate(VAL_SHAPES):
        x0, x1, y0, y1 = w // 4, w // 2, h // 4, h // 2
        im = np.full((h, w, 3), (160, 110, 90), np.uint8)
        im[y0:y1, x0:x1] = (0, 0, 255)
        cv2.imwrite(str(d / f"{i:02d}.png"), im)
        rect = f"0 {(x0 + x1) / 2 / w} {(y0 + y1) / 2 / h} {(x1 - x0) / w} {(y1 - y0) / h}"
        (ld / f"{i:02d}.txt").write_text(f"{rect}\n1 0.5 0.9 {1 / w} 0.1\n")
    return d, build_index([d], nc=2, cache_dir=tmp_path / "cache", split="val")


def _ultralytics_val(d: Path) -> YOLODataset:
    """Ultralytics' own validation data set, as its validator builds it (rect, pad 0.5, stride 32)."""
    return YOLODataset(img_path=str(d), imgsz=S, batch_size=VB, augment=False, rect=True, pad=0.5, stride=32,
                       hyp=get_cfg(), data={"names": NAMES, "channels": 3}, task="detect")


def _names(files: list[str]) -> list[str]:
    return [Path(f).name for f in files]


# (A) every image every epoch -----------------------------------------------------------------------------------


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("batch", [2, 3])
def test_every_rank_trains_a_padded_shard_of_every_image(tmp_path: Path, backend: str, batch: int) -> None:
    idx, world = make_index(tmp_path, 10), 3  # shard ceil(10 / 3) = 4: batches 2+2, or 3+1
    epochs = {r: [[b["im_file"] for b in itertools.islice(s, 2)] for _ in range(2)]
              for r, s in ((r, iter(_train(backend, idx, batch, r, world))) for r in range(world))}
    for e in range(2):
        assert [[len(b) for b in epochs[r][e]] for r in range(world)] == [[batch, 4 - batch]] * world
        files = [f for r in range(world) for b in epochs[r][e] for f in b]
        assert len(files) == 12 and set(files) == set(idx.im_files)  # 2 repeats pad 10 to 12
    assert epochs[0][0] != epochs[0][1]  # reshuffled
    if backend == "torch":  # exactly DistributedSampler(drop_last=False)'s shard
        inner = torch.utils.data.DistributedSampler(range(10), world, 1, shuffle=True, seed=1, drop_last=False)
        inner.set_epoch(1)
        assert sum(epochs[1][1], []) == [idx.im_files[i] for i in inner]


@pytest.mark.parametrize("backend", BACKENDS)
def test_mid_epoch_resume_continues_the_stream(tmp_path: Path, backend: str) -> None:
    idx = make_index(tmp_path, 10)
    full = list(itertools.islice(iter(_train(backend, idx, 3, 1, 3)), 6))  # 3 epochs of 2 batches
    resumed = list(itertools.islice(iter(_train(backend, idx, 3, 1, 3, start_epoch=1, start_batch=1)), 3))
    assert [b["im_file"] for b in resumed] == [b["im_file"] for b in full[3:]]
    if backend == "dali":  # augmentation is seeded per (seed, epoch, rank, position)
        assert all(torch.equal(a["img"], b["img"]) for a, b in zip(resumed, full[3:], strict=True))


def test_a_drop_the_tail_batch_count_is_refused(tmp_path: Path) -> None:
    idx = make_index(tmp_path, 10)
    with pytest.raises(ValueError, match="loader_batches_per_epoch"):  # 10 // 3 // 3 = 1; every image needs 2
        build_train_stream(_data("torch"), "torch", idx, 3, 1, 100, 1, CPU, 0, 3)


# (B) RandomPerspective without mosaic ---------------------------------------------------------------------------


def _red_cores(batch: dict, i: int, s: int) -> list[float]:
    img = batch["img"][i].permute(1, 2, 0).numpy().astype(int)  # RGB
    red = (img[..., 0] > 180) & (img[..., 1] < 80) & (img[..., 2] < 80)
    cores = []
    for x0, y0, x1, y1 in xyxy_px(batch, i, s):
        assert -0.01 <= x0 < x1 <= s + 0.01 and -0.01 <= y0 < y1 <= s + 0.01
        core = red[int(y0) + 2 : int(y1) - 1, int(x0) + 2 : int(x1) - 1]  # minus a rim resampling blends
        if core.size:
            cores.append(float(core.mean()))
    return cores


@pytest.mark.parametrize("backend", BACKENDS)
def test_plain_samples_are_scaled_and_shifted_with_boxes_on_their_objects(tmp_path: Path, backend: str) -> None:
    idx, s = make_index(tmp_path, 12), 128
    ref = {f: xyxy_px(b, i, S) for b in _val(backend, idx, rect=False) for i, f in enumerate(b["im_file"])}
    stream = _train(backend, idx, 4, 0, 1, imgsz=s, hsv_h=0, hsv_s=0, hsv_v=0, fliplr=0, translate=0.1, scale=0.5)
    moved, cores = 0, []
    for batch in itertools.islice(iter(stream), 6):  # two epochs
        assert batch["img"].shape[1:] == (3, s, s)
        for i, f in enumerate(batch["im_file"]):
            cores += _red_cores(batch, i, s)
            got = xyxy_px(batch, i, s)
            moved += got.shape != ref[f].shape or bool(np.abs(got - ref[f]).max() > 2)
    assert moved >= 18, moved  # of 24: scale and translate move nearly every sample
    assert len(cores) > 20 and min(cores) > 0.8, cores


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("mosaic", [0.0, 1e-6])  # 1e-6: DALI's mosaic graph, plain samples cut in quarters
def test_no_translate_or_scale_is_the_centred_letterbox(tmp_path: Path, backend: str, mosaic: float) -> None:
    idx, s = make_index(tmp_path, 8), 128  # sizes whose centring needs no half-pixel shift in cv2.warpAffine
    ref = {f: (b["img"][i], b["bboxes"][b["batch_idx"] == i]) for b in _val(backend, idx, rect=False)
           for i, f in enumerate(b["im_file"])}
    stream = _train(backend, idx, 4, 0, 1, imgsz=s, hsv_h=0, hsv_s=0, hsv_v=0, fliplr=0, translate=0.0,
                    scale=0.0, mosaic=mosaic)
    for batch in itertools.islice(iter(stream), 2):
        for i, f in enumerate(batch["im_file"]):
            img, boxes = ref[f]
            assert torch.equal(batch["img"][i], img), f
            # DALI: the letterbox's own box arithmetic; Ultralytics scales boxes by the load_image size
            # (sides rounded up) where LetterBox uses the exact ratio: under half a pixel apart.
            tol = 1e-6 if backend == "dali" else 0.5 / s
            assert torch.allclose(batch["bboxes"][batch["batch_idx"] == i], boxes, atol=tol), f


# (C) rectangular validation, (D) no ground truth dropped --------------------------------------------------------


@pytest.mark.parametrize("backend", BACKENDS)
def test_rect_validation_matches_ultralytics(tmp_path: Path, backend: str) -> None:
    d, idx = _val_set(tmp_path)
    ref = _ultralytics_val(d)
    batches = _val(backend, idx)
    assert [tuple(b["img"].shape[2:]) for b in batches] == [tuple(s) for s in ref.batch_shapes]
    assert len({tuple(s) for s in ref.batch_shapes}) > 1  # the set does exercise different shapes
    for k, b in enumerate(batches):
        want = YOLODataset.collate_fn([ref[j] for j in range(k * VB, min(len(ref), (k + 1) * VB))])
        assert _names(b["im_file"]) == _names(want["im_file"])
        assert torch.equal(b["cls"], want["cls"]) and torch.equal(b["batch_idx"], want["batch_idx"])
        assert (b["bboxes"] - want["bboxes"]).abs().max() < 1e-4
        assert b["ratio_pad"] == list(want["ratio_pad"]) and b["ori_shape"] == list(want["ori_shape"])
        assert b["resized_shape"] == [tuple(int(v) for v in ref.batch_shapes[k])] * len(b["im_file"])
        diff = (b["img"].float() - want["img"].float()).abs()
        # torch: Ultralytics' own transforms; DALI: the same bilinear resize and grey padding.
        assert diff.max() == 0 if backend == "torch" else diff.mean() < 0.5, diff.mean()


def test_rect_validation_backends_agree(tmp_path: Path) -> None:
    _, idx = _val_set(tmp_path)
    for a, b in zip(_val("torch", idx), _val("dali", idx), strict=True):
        assert a["im_file"] == b["im_file"] and a["img"].shape == b["img"].shape
        assert (a["bboxes"] - b["bboxes"]).abs().max() < 1e-4 and torch.equal(a["cls"], b["cls"])
        assert (a["img"].float() - b["img"].float()).abs().mean() < 0.5


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("world", [1, 2, 3])
def test_rect_validation_scores_every_image_once_in_single_process_shapes(tmp_path: Path, backend: str,
                                                                          world: int) -> None:
    d, idx = _val_set(tmp_path)
    ref = _ultralytics_val(d)
    shape_of = {Path(f).name: tuple(int(v) for v in ref.batch_shapes[k]) for f, k in zip(ref.im_files, ref.batch,
                                                                                          strict=True)}
    seen = []
    for rank in range(world):
        for b in _val(backend, idx, rank, world):
            seen += _names(b["im_file"])
            assert {shape_of[n] for n in _names(b["im_file"])} == {tuple(b["img"].shape[2:])}
    assert sorted(seen) == sorted(shape_of)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("rect", [True, False])
def test_validation_keeps_one_pixel_ground_truth(tmp_path: Path, backend: str, rect: bool) -> None:
    _, idx = _val_set(tmp_path)
    for b in _val(backend, idx, rect=rect):
        for i, f in enumerate(b["im_file"]):
            assert sorted(b["cls"][b["batch_idx"] == i].view(-1).tolist()) == [0.0, 1.0], f
        thin = b["bboxes"][b["cls"].view(-1) == 1]
        assert (thin[:, 2] * b["img"].shape[3] < 1.5).any()  # a box about one pixel wide survived


class _Oracle(torch.nn.Module):
    """Predicts each batch's ground truth (conf 0.9) as YOLO's raw head output, batch after batch."""

    def __init__(self, batches: list[dict]) -> None:
        super().__init__()
        self.w = torch.nn.Parameter(torch.zeros(1))
        self.batches = list(batches)

    def forward(self, img: torch.Tensor) -> torch.Tensor:
        b = self.batches.pop(0)
        h, w = img.shape[2:]
        out = torch.zeros(len(img), 4 + len(NAMES), 4)
        for si in range(len(img)):
            m = b["batch_idx"] == si
            k = int(m.sum())
            out[si, :4, :k] = (b["bboxes"][m] * torch.tensor([w, h, w, h])).T
            out[si, 4 + b["cls"][m].view(-1).long(), torch.arange(k)] = 0.9
        return out


@pytest.mark.parametrize("backend", BACKENDS)
def test_evaluate_scores_rectangular_batches(tmp_path: Path, backend: str) -> None:
    _, idx = _val_set(tmp_path)
    batches = _val(backend, idx)
    scorer = make_scorer(NAMES, 0.001, 0.7, 300, tmp_path)
    result = evaluate(_Oracle(batches), batches, scorer, CPU, None)
    assert result is not None and result.images == len(VAL_SHAPES) and result.instances == 2 * len(VAL_SHAPES)
    assert result.map50_95 > 0.99  # ground truth scored against itself, in each batch's own (h, w)


def test_val_preview_uses_the_rectangles(tmp_path: Path) -> None:
    _, idx = _val_set(tmp_path)
    scorer = make_scorer(NAMES, 0.001, 0.7, 300, tmp_path)
    preview = ValPreview(idx, NAMES, S, scorer, 3)
    shapes = [s.image.shape for s in preview.samples]
    assert shapes == [(128, 160, 3), (160, 128, 3), (160, 160, 3)]  # one-image rect batches of 96x128, ...
    red = preview.samples[0].true_xyxy[preview.samples[0].true_cls == 0][0]
    img = preview.samples[0].image
    assert (img[int(red[1]) + 1 : int(red[3]) - 1, int(red[0]) + 1 : int(red[2]) - 1, 0] > 200).all()
    out = preview.predict(_Oracle([{"batch_idx": torch.zeros(0), "bboxes": torch.zeros(0, 4),
                                    "cls": torch.zeros(0, 1)}] * 3))
    assert len(out) == 3 and all(len(p["ground_truth"]["box_data"]) == 2 for _, p in out)
