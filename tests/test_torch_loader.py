"""The torch DataLoader backend: letterbox geometry, flip, batch layout, samplers, full epochs."""

from __future__ import annotations

import itertools
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from tests.red_boxes import make_index as red_boxes_index
from tests.red_boxes import xyxy_px
from yolo_ddp.data.dataset import DatasetIndex, build_index
from yolo_ddp.data.torch_loader import EpochBatchSampler, ShardSampler, YoloDataset, build_loader, collate

IMGSZ = 64


def make_index(tmp_path: Path, n: int = 7) -> DatasetIndex:
    """n images of alternating sizes; image i has i % 3 boxes (so some are background), plus one corrupt file."""
    d = tmp_path / "ds/images/train"
    d.mkdir(parents=True)
    (tmp_path / "ds/labels/train").mkdir(parents=True)
    for i in range(n):
        h, w = (40, 80) if i % 2 == 0 else (90, 45)
        im = np.full((h, w, 3), 50, np.uint8)
        im[:, : w // 2] = (0, 0, 255)  # BGR red on the left half
        cv2.imwrite(str(d / f"{i:02d}.jpg"), im)
        rows = [f"{k} 0.25 0.5 0.2 0.4" for k in range(i % 3)]
        (tmp_path / f"ds/labels/train/{i:02d}.txt").write_text("\n".join(rows))
    (d / "zz_corrupt.jpg").write_bytes(b"not a jpeg at all")
    return build_index([d], nc=3, cache_dir=tmp_path / "cache", split="train")


def test_letterbox_box_and_metadata(tmp_path: Path) -> None:
    idx = make_index(tmp_path)
    s = YoloDataset(idx, IMGSZ, augment=False)[2]  # 40x80 image, two boxes cx=.25 cy=.5 w=.2 h=.4
    # r = min(64/40, 64/80) = 0.8 -> 64x32 content, 16 px grey above and below.
    assert s["ori_shape"] == (40, 80) and s["ratio_pad"] == ((0.8, 0.8), (0, 16))
    expected = [0.25, (0.5 * 40 * 0.8 + 16) / 64, 0.2, 0.4 * 40 * 0.8 / 64]
    assert torch.allclose(s["bboxes"], torch.tensor([expected] * 2), atol=1e-6)
    assert s["cls"].tolist() == [[0.0], [1.0]] and s["batch_idx"].tolist() == [0.0, 0.0]
    img = s["img"]
    assert img.dtype == torch.uint8 and img.shape == (3, IMGSZ, IMGSZ)
    assert img[:, 0, 0].tolist() == [114, 114, 114]  # padding
    r, g, b = img[:, 32, 5].tolist()
    assert r > 240 and g < 15 and b < 15  # BGR red on disk -> RGB red (JPEG rounding aside)


def test_flip_mirrors_cx_and_pixels(tmp_path: Path) -> None:
    idx = make_index(tmp_path)
    plain = YoloDataset(idx, IMGSZ, augment=False)[2]
    flipped = YoloDataset(idx, IMGSZ, augment=True, hsv_h=0.0, hsv_s=0.0, hsv_v=0.0, fliplr=1.0, translate=0.0,
                          scale=0.0)[2]  # no affine jitter: the letterbox's geometry
    assert torch.allclose(flipped["bboxes"][:, 0], 1 - plain["bboxes"][:, 0], atol=1e-6)
    assert torch.allclose(flipped["bboxes"][:, 1:], plain["bboxes"][:, 1:])
    assert torch.equal(flipped["img"], plain["img"].flip(-1))


def test_collate_layout(tmp_path: Path) -> None:
    idx = make_index(tmp_path)
    ds = YoloDataset(idx, IMGSZ, augment=False)
    b = collate([ds[i] for i in range(4)])  # 0, 1, 2, 0 boxes
    assert (
        b["img"].shape == (4, 3, IMGSZ, IMGSZ) and b["img"].dtype == torch.uint8 and b["img"].is_contiguous()
    )
    assert b["cls"].shape == (3, 1) and b["cls"].dtype == torch.float32
    assert b["bboxes"].shape == (3, 4) and b["bboxes"].dtype == torch.float32
    assert b["batch_idx"].dtype == torch.float32 and b["batch_idx"].tolist() == [1.0, 2.0, 2.0]
    assert isinstance(b["im_file"], list) and b["im_file"][3] == idx.im_files[3]
    assert b["ori_shape"] == [(40, 80), (90, 45), (40, 80), (90, 45)]
    assert isinstance(b["ratio_pad"], list) and b["ratio_pad"][1] == ((64 / 90, 64 / 90), (16, 0))


def test_shard_sampler_covers_each_index_once() -> None:
    shards = [list(ShardSampler(10, rank=r, world_size=3)) for r in range(3)]
    assert [len(s) for s in shards] == [4, 3, 3]
    assert sorted(i for s in shards for i in s) == list(range(10))
    with pytest.raises(ValueError):
        ShardSampler(10, rank=3, world_size=3)


@pytest.mark.parametrize("workers", [0, 1])
def test_train_epoch(tmp_path: Path, workers: int) -> None:
    idx = make_index(tmp_path)
    assert len(idx) == 7 and not any("corrupt" in f for f in idx.im_files)
    loader = build_loader(
        idx, IMGSZ, batch_per_rank=2, workers=workers, train=True, seed=3, augment={"fliplr": 0.5}
    )
    stream = iter(loader)  # endless: every image every epoch, 3 full batches and a last one of 1
    for _epoch in range(2):
        batches = list(itertools.islice(stream, 4))
        assert [b["img"].shape for b in batches] == [(2, 3, IMGSZ, IMGSZ)] * 3 + [(1, 3, IMGSZ, IMGSZ)]
        for b in batches:
            assert ((b["bboxes"] >= 0) & (b["bboxes"] <= 1)).all()
            assert b["batch_idx"].shape == (b["cls"].shape[0],)
            counts = [len(idx.labels_for(idx.im_files.index(f))) for f in b["im_file"]]
            assert torch.bincount(b["batch_idx"].long(), minlength=len(counts)).tolist() == counts
        seen = [f for b in batches for f in b["im_file"]]
        assert sorted(seen) == sorted(idx.im_files)


def test_val_loader_sees_every_image_once(tmp_path: Path) -> None:
    idx = make_index(tmp_path)
    loader = build_loader(idx, IMGSZ, batch_per_rank=4, workers=0, train=False)
    assert isinstance(loader.sampler, ShardSampler)
    files = [f for b in loader for f in b["im_file"]]
    assert files == idx.im_files


def test_build_loader_rejects_bad_settings(tmp_path: Path) -> None:
    idx = make_index(tmp_path)
    with pytest.raises(ValueError, match="copy_paste"):  # segmentation-only: no detection key takes it
        build_loader(idx, IMGSZ, 2, 0, train=True, augment={"copy_paste": 1.0})
    with pytest.raises(ValueError, match="loader_batches_per_epoch"):  # the old drop-the-tail count
        build_loader(idx, IMGSZ, 2, 0, train=True, batches_per_epoch=3)
    assert next(iter(build_loader(idx, IMGSZ, 8, 0, train=True)))["img"].shape[0] == 7  # one short batch


def test_stream_epochs_are_whole_shuffles_and_resume_where_they_left_off() -> None:
    stream = EpochBatchSampler(10, batch_per_rank=2, rank=0, world_size=3, seed=5)  # shard 4: 2 batches
    it = iter(stream)
    epoch0, epoch1 = [next(it) for _ in range(2)], [next(it) for _ in range(2)]
    inner = torch.utils.data.DistributedSampler(range(10), num_replicas=3, rank=0, shuffle=True, seed=5,
                                                drop_last=False)
    inner.set_epoch(1)
    assert sum(epoch1, []) == [(i, 1, False) for i in inner] and epoch0 != epoch1
    assert {e for b in epoch0 for _, e, _ in b} == {0}  # the dataset learns the epoch (mosaic until close_mosaic)
    resumed = iter(EpochBatchSampler(10, 2, 0, 3, seed=5, start_epoch=1))
    assert [next(resumed) for _ in range(2)] == epoch1
    mid = iter(EpochBatchSampler(10, 2, 0, 3, seed=5, start_epoch=0, start_batch=1))
    assert [next(mid) for _ in range(3)] == epoch0[1:] + epoch1
    assert [len(b) for b in itertools.islice(iter(EpochBatchSampler(10, 3, 2, 3)), 4)] == [3, 1, 3, 1]
    moving = EpochBatchSampler(10, 2, 0, 3, seed=5, mosaic_until=2)  # the mosaic decision is read per batch
    it = iter(moving)
    assert next(it)[0][2] is True
    moving.mosaic_until = 0  # a re-planned run (train.time) closes it now
    assert next(it)[0][2] is False


def test_mosaic_until_close_mosaic(tmp_path: Path) -> None:
    """Ultralytics' Mosaic + RandomPerspective in mosaic epochs, the letterbox after `mosaic_until`."""
    idx, s = red_boxes_index(tmp_path, 12), 128
    ds = YoloDataset(idx, s, augment=True, hsv_h=0, hsv_s=0, hsv_v=0, fliplr=0.5, mosaic=1.0, mosaic_until=1)
    checked = 0
    for i in range(len(idx)):
        batch = collate([ds[(i, 0)]])
        img = batch["img"][0].permute(1, 2, 0).numpy().astype(int)
        red = (img[..., 0] > 180) & (img[..., 1] < 80) & (img[..., 2] < 80)
        for x0, y0, x1, y1 in xyxy_px(batch, 0, s):
            core = red[int(y0) + 2 : int(y1) - 1, int(x0) + 2 : int(x1) - 1]
            assert core.size == 0 or core.mean() > 0.8
            checked += core.size > 0
        assert batch["img"].shape == (1, 3, s, s)
    assert checked > 10
    # Past mosaic_until: one image through RandomPerspective; without jitter, the letterbox's boxes.
    still = YoloDataset(idx, s, augment=True, hsv_h=0, hsv_s=0, hsv_v=0, fliplr=0.0, mosaic=1.0, mosaic_until=1,
                        translate=0.0, scale=0.0)
    want = YoloDataset(idx, s, augment=False)[0]["bboxes"]
    assert torch.allclose(still[(0, 1)]["bboxes"], want, atol=0.5 / s)
