"""`data.cache=ram|disk`: one decoded store per node, the same training with and without it, and nothing trusted
that a failed or interrupted build left behind."""

from __future__ import annotations

import csv
import errno
import json
import os
import random
import socket
import subprocess
import sys
import time
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from tests.red_boxes import make_index
from yolo_ddp.config import DataConfig
from yolo_ddp.data import image_cache
from yolo_ddp.data.dataset import DatasetIndex
from yolo_ddp.data.image_cache import load_resized, open_store, pending_bytes, store_root
from yolo_ddp.data.spec import DataError
from yolo_ddp.data.torch_loader import build_loader
from yolo_ddp.memory.run import free_bytes

S = 96  # every test image (90..200 px) is resized, up or down
AUG = {"mosaic": 1.0, "mixup": 0.3, "degrees": 5.0, "scale": 0.3, "translate": 0.1, "fliplr": 0.5}


@pytest.fixture(autouse=True)
def _own_shm(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(image_cache.SHM_ENV, str(tmp_path / "shm"))  # each test its own ram root


def _store(index: DatasetIndex, tmp_path: Path, mode: str = "ram", split: str = "train"):
    return open_store(index.im_files, index.shapes, S, mode, tmp_path / "cache", split)


def _batches(index: DatasetIndex, store, workers: int, n: int = 6, train: bool = True) -> list[dict]:
    random.seed(0)
    np.random.seed(0)
    loader = build_loader(index, S, 4, workers, train=train, seed=3, augment=AUG, mosaic_until=1, rank=0,
                          world=1, rect=not train, store=store)
    out = []
    for b in loader:
        out.append(b)
        if len(out) == n:
            break
    return out


def _same(a: list[dict], b: list[dict]) -> None:
    assert len(a) == len(b)
    for x, y in zip(a, b, strict=True):
        assert x["im_file"] == y["im_file"]
        assert torch.equal(x["img"], y["img"])
        assert torch.equal(x["bboxes"], y["bboxes"]) and torch.equal(x["cls"], y["cls"])
        assert x["ratio_pad"] == y["ratio_pad"] and x["ori_shape"] == y["ori_shape"]


@pytest.mark.parametrize("mode", ["ram", "disk"])
def test_stored_pixels_are_load_image_and_training_is_unchanged(tmp_path: Path, mode: str) -> None:
    index = make_index(tmp_path, n=12)
    store = _store(index, tmp_path, mode)
    assert "built" in store.note and store.root.parent == store_root(mode, tmp_path / "cache")
    for i, f in enumerate(index.im_files):
        img, hw0 = store.image(i)
        want, want_hw0 = load_resized(f, S)
        assert np.array_equal(img, want) and hw0 == want_hw0
    # Training batches (mosaic + mixup partners from Ultralytics' buffer, affine, HSV, flips): identical in the
    # main process and in two loader workers, which map the store themselves.
    _same(_batches(index, None, 0, n=8), _batches(index, store, 0, n=8))
    _same(_batches(index, None, 2), _batches(index, store, 2))
    # Rectangular validation (the cached load_image, then LetterBox into the batch shape).
    _same(_batches(index, None, 0, train=False), _batches(index, store, 0, train=False))
    again = _store(index, tmp_path, mode)
    assert again.note == "reused" and again.root == store.root


def test_a_changed_source_file_rebuilds_the_store(tmp_path: Path) -> None:
    index = make_index(tmp_path, n=6)
    first = _store(index, tmp_path)
    before = first.image(2)[0].copy()
    f = index.im_files[2]
    img = cv2.imread(f)
    cv2.imwrite(f, 255 - img)  # same size, new pixels
    os.utime(f, ns=(time.time_ns(), time.time_ns() + 10**9))
    second = _store(index, tmp_path)
    assert "built" in second.note and second.root == first.root  # rebuilt in place, same name
    assert np.array_equal(second.image(2)[0], load_resized(f, S)[0])
    assert not np.array_equal(second.image(2)[0], before)
    assert [p.name for p in second.root.parent.iterdir()] == [second.root.name]  # no temp dir left


def test_an_oversized_cache_is_refused_before_anything_is_written(tmp_path: Path,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    index = make_index(tmp_path, n=6)
    need = int(sum(h * w * 3 for h, w in (image_cache.load_image_size(s, S) for s in index.shapes)))
    monkeypatch.setattr(image_cache, "host_available_bytes", lambda: need)  # fits, but not with the 50% margin
    with pytest.raises(DataError) as e:
        pending_bytes({"train": index}, S, "ram", tmp_path / "cache")
    msg = str(e.value)
    assert "data.cache=ram" in msg and "6 'train' images" in msg and "data.cache=disk" in msg
    assert "host memory available" in msg and "MiB" in msg
    with pytest.raises(DataError, match="data.cache=disk"):
        _store(index, tmp_path)
    assert not any(store_root("ram", tmp_path / "cache").glob("train-*"))
    monkeypatch.setattr(image_cache, "_free_bytes", lambda path: need)
    with pytest.raises(DataError, match=r"disk of .* free.*data.cache_dir"):
        pending_bytes({"train": index}, S, "disk", tmp_path / "cache")
    assert not (tmp_path / "cache/images").exists() or not any((tmp_path / "cache/images").iterdir())


def test_pending_bytes_count_only_what_is_still_to_build_and_reach_the_cpu_plan(tmp_path: Path,
                                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    index = make_index(tmp_path, n=6)
    need = pending_bytes({"train": index}, S, "ram", tmp_path / "cache")
    assert need == sum(h * w * 3 for h, w in (image_cache.load_image_size(s, S) for s in index.shapes))
    _store(index, tmp_path)
    assert pending_bytes({"train": index}, S, "ram", tmp_path / "cache") == 0  # built: already in MemAvailable
    cpu = torch.device("cpu")
    assert free_bytes(cpu, 2, host_reserved=need) == (free_bytes(cpu, 1) - need) // 2 or \
        abs(free_bytes(cpu, 2, host_reserved=need) - (free_bytes(cpu, 1) - need) // 2) < 64 << 20  # meminfo moves


def test_a_failed_or_killed_build_leaves_nothing_trusted(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    index = make_index(tmp_path, n=6)
    root = store_root("ram", tmp_path / "cache")
    real = image_cache.load_resized
    calls = []

    def flaky(path: str, imgsz: int, window=None):
        calls.append(path)
        if len(calls) == 4:
            raise OSError("read error half-way")
        return real(path, imgsz, window)

    monkeypatch.setattr(image_cache, "load_resized", flaky)
    with pytest.raises(OSError, match="half-way"):
        _store(index, tmp_path)
    assert list(root.iterdir()) == []  # neither the store nor its temp dir
    monkeypatch.setattr(image_cache, "load_resized", real)

    def full(fd: int, offset: int, length: int) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    fallocate = os.posix_fallocate
    monkeypatch.setattr(os, "posix_fallocate", full)
    with pytest.raises(DataError, match="no room to write.*nothing was kept"):
        _store(index, tmp_path)
    assert list(root.iterdir()) == []
    monkeypatch.setattr(os, "posix_fallocate", fallocate)

    # A build killed mid-way (SIGKILL: no cleanup) leaves a temp dir of a dead process: swept, never read.
    store = _store(index, tmp_path)
    dead = root / f".{store.root.name}.{socket.gethostname()}.999999999.tmp"
    dead.mkdir()
    (dead / "pixels.u8").write_bytes(b"\0" * 10)
    # A published store whose pixels were cut short (a disk error) is not trusted either: rebuilt.
    with open(store.root / "pixels.u8", "r+b") as fh:
        fh.truncate(100)
    rebuilt = _store(index, tmp_path)
    assert "built" in rebuilt.note and not dead.exists()
    assert np.array_equal(rebuilt.image(5)[0], load_resized(index.im_files[5], S)[0])
    meta = json.loads((rebuilt.root / "meta.json").read_text())
    assert meta["nbytes"] == (rebuilt.root / "pixels.u8").stat().st_size == rebuilt.nbytes


def test_cache_values_are_yolo_trains() -> None:
    assert [DataConfig(cache=v).cache for v in ("ram", True, "True", "disk", False, None)] == \
        ["ram", "ram", "ram", "disk", False, False]
    with pytest.raises(ValueError, match=r"data\.cache.*ram \(or true\), disk or false"):
        DataConfig(cache="gpu")


def test_dali_reads_the_store_instead_of_decoding(tmp_path: Path) -> None:
    """DALI's external source hands the stored pixels to the graph (no decode): rectangular validation then equals
    the torch backend's pixel for pixel, and training keeps its geometry (same boxes, same samples)."""
    pytest.importorskip("nvidia.dali")
    from yolo_ddp.data.dali import DaliSettings, DaliTrainStream, DaliValLoader
    from yolo_ddp.data.dali_source import Augment

    cpu = DaliSettings(device_id=None, threads=2)
    index = make_index(tmp_path, n=8, fmt="jpg")
    store = _store(index, tmp_path)
    torch_val = {tuple(b["im_file"]): b for b in _batches(index, store, 0, n=99, train=False)}
    for b in DaliValLoader(index, S, 4, 0, 1, cpu, rect=True, store=store):
        want = torch_val[tuple(b["im_file"])]
        assert torch.equal(b["img"].contiguous(), want["img"]) and torch.equal(b["bboxes"], want["bboxes"])
    aug = Augment(hsv_h=0, hsv_s=0, hsv_v=0, fliplr=0.5, mosaic=1.0, scale=0.3)
    plain, cached = (DaliTrainStream(index, S, 4, 2, 0, 1, seed=1, augment=aug, settings=cpu, mosaic_until=99,
                                     store=st) for st in (None, store))
    a, b = next(iter(plain)), next(iter(cached))
    assert a["im_file"] == b["im_file"] and torch.equal(a["bboxes"], b["bboxes"])
    # Decode + one resize vs the stored load_image + a second resize: close, not bit-equal.
    assert (a["img"].float() - b["img"].float()).abs().mean() < 3


@pytest.mark.slow
def test_two_ranks_share_one_store_and_train_as_without_it(tmp_path: Path) -> None:
    """A 2-rank job with loader workers: local rank 0 builds one store per split, the next job reuses it, and
    the losses are those of the same job without the cache."""
    make_index(tmp_path, n=12)
    (tmp_path / "ds/data.yaml").write_text("path: .\ntrain: images/train\nval: images/train\nnames: [a, b, c]\n")
    shm = tmp_path / "shm"

    def run(name: str, *extra: str) -> tuple[list[dict], str]:
        env = {**os.environ, "YOLO_DDP_OUTPUTS": str(tmp_path / name), "CUDA_VISIBLE_DEVICES": "",
               image_cache.SHM_ENV: str(shm)}
        proc = subprocess.run(
            [sys.executable, "-m", "launcher", "+experiment=pcb_defects", f"data.path={tmp_path / 'ds/data.yaml'}",
             "train=cpu_quick", "train.epochs=2", "train.val_every=1", f"data.imgsz={S}", "train.batch=4",
             "data.workers=1", "logger=csv", "launcher.nproc_per_node=2", f"data.cache_dir={tmp_path / 'cache'}",
             *extra], capture_output=True, text=True, env=env, timeout=600, cwd=Path(__file__).parents[1])
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
        [metrics] = (tmp_path / name).rglob("metrics.csv")
        return list(csv.DictReader(metrics.open())), (metrics.parent / "rank0.log").read_text()

    plain, _ = run("plain")
    cached, log = run("cached", "data.cache=ram")
    assert log.count("data.cache=ram: 12 images") == 2 and log.count("built in") == 2  # train and val stores
    assert sorted(p.name.split("-")[0] for p in (shm / "yolo_ddp").iterdir()) == ["train", "val"]
    again, log = run("again", "data.cache=ram")
    assert log.count("(reused)") == 2
    losses = ("box_loss", "cls_loss", "dfl_loss", "mAP50-95")
    assert [[r[k] for k in losses] for r in plain] == [[r[k] for k in losses] for r in cached] == \
        [[r[k] for k in losses] for r in again]
