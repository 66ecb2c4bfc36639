"""Images that are not 8-bit RGB: both backends turn them into the same 3-channel uint8 pixels, boxes on target.

Grayscale and 16-bit PNGs are converted (OpenCV's IMREAD_COLOR in the torch backend, DALI's RGB decode in the
other); an EXIF-rotated JPEG is shown upright by both, and its YOLO labels refer to the upright image, as in
Ultralytics, so the index records the rotated size.
"""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from PIL import Image

from tests.red_boxes import xyxy_px
from yolo_ddp.data.dataset import DatasetIndex, build_index
from yolo_ddp.data.torch_loader import YoloDataset, collate

H, W, S = 96, 64, 64  # the upright image is portrait, so a missed rotation moves the box off its object
BOX = (8, 12, 30, 40)  # x0, y0, bw, bh in upright pixels: off-centre, so any flip or rotation misses it
ORIENTATION_TO_STORED = {6: lambda a: np.rot90(a, 1), 8: lambda a: np.rot90(a, -1), 3: lambda a: np.rot90(a, 2)}


def upright(value: int = 250) -> np.ndarray:
    im = np.full((H, W), 40, np.uint8)
    x0, y0, bw, bh = BOX
    im[y0 : y0 + bh, x0 : x0 + bw] = value
    return im


def write_images(d: Path) -> None:
    g = upright()
    cv2.imwrite(str(d / "gray.png"), g)
    cv2.imwrite(str(d / "gray16.png"), g.astype(np.uint16) * 257)
    cv2.imwrite(str(d / "rgb16.png"), np.dstack([g, g, g]).astype(np.uint16) * 257)
    for tag, to_stored in ORIENTATION_TO_STORED.items():  # EXIF orientation `tag` turns the stored image upright
        exif = Image.Exif()
        exif[0x0112] = tag
        Image.fromarray(np.ascontiguousarray(to_stored(g))).convert("RGB").save(
            d / f"exif{tag}.jpg", exif=exif.tobytes(), quality=95
        )


@pytest.fixture
def index(tmp_path: Path) -> DatasetIndex:
    d, ld = tmp_path / "ds/images/val", tmp_path / "ds/labels/val"
    d.mkdir(parents=True)
    ld.mkdir(parents=True)
    write_images(d)
    x0, y0, bw, bh = BOX
    for f in d.iterdir():
        (ld / f"{f.stem}.txt").write_text(f"0 {(x0 + bw / 2) / W} {(y0 + bh / 2) / H} {bw / W} {bh / H}\n")
    return build_index([d], nc=1, cache_dir=tmp_path / "cache", split="val")


def test_index_records_the_upright_size(index: DatasetIndex) -> None:
    assert len(index) == 6 and not index.skipped
    assert index.shapes.tolist() == [[H, W]] * 6


def check_boxes_on_object(batch: dict) -> None:
    for i, name in enumerate(batch["im_file"]):
        img = batch["img"][i]
        assert img.shape == (3, S, S) and img.dtype == torch.uint8, name
        [(x0, y0, x1, y1)] = xyxy_px(batch, i, S)
        inside = img[:, int(np.ceil(y0)) + 1 : int(y1) - 1, int(np.ceil(x0)) + 1 : int(x1) - 1].float()
        assert inside.mean() > 230, (Path(name).name, inside.mean())
        rest = img.float().sum() - img[:, int(y0) : int(np.ceil(y1)), int(x0) : int(np.ceil(x1))].float().sum()
        assert rest / (3 * S * S - inside.numel()) < 120, Path(name).name  # grey padding and dark background


def test_torch_backend_converts_and_keeps_boxes(index: DatasetIndex) -> None:
    ds = YoloDataset(index, S, augment=False)
    check_boxes_on_object(collate([ds[i] for i in range(len(index))]))


def test_dali_backend_agrees_with_torch(index: DatasetIndex) -> None:
    pytest.importorskip("nvidia.dali")
    from yolo_ddp.data.dali import DaliSettings, DaliValLoader

    ref = YoloDataset(index, S, augment=False)
    for batch in DaliValLoader(index, S, 3, 0, 1, DaliSettings(device_id=None, threads=1)):
        check_boxes_on_object(batch)
        want = collate([ref[index.im_files.index(f)] for f in batch["im_file"]])
        assert torch.equal(batch["bboxes"], want["bboxes"]) or (batch["bboxes"] - want["bboxes"]).abs().max() < 1e-5
        # 16-bit → 8-bit: OpenCV truncates (v >> 8), DALI rounds; JPEG IDCTs may differ in the last bit.
        assert (batch["img"].float() - want["img"].float()).abs().max() <= 2
