"""The DALI backend on CPU: same letterbox as the torch backend, boxes stay on their objects, exact sharding."""

from __future__ import annotations

import itertools
from pathlib import Path

import numpy as np
import pytest
import torch

from tests.red_boxes import make_index, xyxy_px
from yolo_ddp.data.dali import DaliSettings, DaliTrainStream, DaliValLoader
from yolo_ddp.data.dali_source import NO_AUGMENT, Augment, TrainSource
from yolo_ddp.data.dataset import build_index
from yolo_ddp.data.torch_loader import YoloDataset, collate

CPU = DaliSettings(device_id=None, threads=2)
def _inside(lo: float, hi: float) -> tuple[int, int]:
    a, b = int(np.ceil(lo)), int(np.floor(hi))
    return (a + 1, b - 1) if b - a > 4 else (a, max(b, a + 1))


@pytest.mark.parametrize(("fmt", "s"), [("png", 96), ("jpg", 96), ("png", 128)])  # 128: some need no resize
def test_letterbox_matches_torch_backend(tmp_path: Path, fmt: str, s: int) -> None:
    idx = make_index(tmp_path, 8, fmt)
    dali_batches = list(DaliValLoader(idx, s, 4, 0, 1, CPU))
    ref = YoloDataset(idx, s, augment=False)
    assert sum(len(b["im_file"]) for b in dali_batches) == len(idx)
    for b in dali_batches:
        want = collate([ref[idx.im_files.index(f)] for f in b["im_file"]])
        assert b["img"].shape == want["img"].shape and b["img"].dtype == torch.uint8
        assert b["ratio_pad"] == want["ratio_pad"] and b["ori_shape"] == want["ori_shape"]
        assert torch.equal(b["batch_idx"], want["batch_idx"]) and torch.equal(b["cls"], want["cls"])
        assert (b["bboxes"] - want["bboxes"]).abs().max() * s <= 1.0  # boxes within 1 px
        diff = (b["img"].float() - want["img"].float()).abs()
        # Same bilinear resize and grey padding; PNG is lossless, JPEG decoders (libjpeg-turbo in both)
        # may differ in the last bit of the IDCT here and there.
        assert diff.mean() < 0.05, diff.mean()  # measured: 0.0009 (png), 0.009 (jpg)


def test_mosaic_and_flip_keep_boxes_on_their_objects(tmp_path: Path) -> None:
    idx, s = make_index(tmp_path, 12), 128
    aug = Augment(hsv_h=0, hsv_s=0, hsv_v=0, fliplr=0.5, mosaic=1.0, scale=0.5)
    stream = iter(DaliTrainStream(idx, s, 4, 3, 0, 1, seed=1, augment=aug, settings=CPU, mosaic_until=99))
    checked = 0
    for batch in itertools.islice(stream, 6):
        for i in range(len(batch["img"])):
            img = batch["img"][i].permute(1, 2, 0).numpy().astype(int)  # RGB
            red = (img[..., 0] > 180) & (img[..., 1] < 80) & (img[..., 2] < 80)
            for x0, y0, x1, y1 in xyxy_px(batch, i, s):
                assert -0.01 <= x0 < x1 <= s + 0.01 and -0.01 <= y0 < y1 <= s + 0.01
                # Whole pixels inside the box, minus a 1 px rim (resampling blends edges) where it is wide enough.
                (ya, yb), (xa, xb) = (_inside(y0, y1), _inside(x0, x1))
                inner = red[ya:yb, xa:xb]
                assert inner.size and inner.mean() > 0.9, (batch["im_file"][i], inner.mean())
                checked += 1
    assert checked > 30


def test_two_ranks_get_disjoint_shards_covering_the_data_set(tmp_path: Path) -> None:
    idx = make_index(tmp_path, 12)
    seen: dict[int, list[str]] = {}
    for rank in (0, 1):
        stream = iter(DaliTrainStream(idx, 64, 3, 2, rank, 2, seed=5, augment=NO_AUGMENT, settings=CPU,
                                      mosaic_until=0))
        seen[rank] = [f for b in itertools.islice(stream, 2) for f in b["im_file"]]  # one epoch
    assert not set(seen[0]) & set(seen[1])
    assert sorted(seen[0] + seen[1]) == sorted(idx.im_files)


def test_epochs_reshuffle_in_agreement_and_resume_continues_the_stream() -> None:
    class Fake:  # only len() matters for the shard order
        def __len__(self) -> int:
            return 10

    a = [TrainSource(Fake(), 64, 5, r, 2, 3, NO_AUGMENT, 1) for r in (0, 1)]  # type: ignore[arg-type]
    for epoch in (0, 1):
        assert sorted(np.concatenate([src.shard(epoch) for src in a]).tolist()) == list(range(10))
    assert a[0].shard(0).tolist() != a[0].shard(1).tolist()
    resumed = TrainSource(Fake(), 64, 5, 0, 2, 3, NO_AUGMENT, 1, start_epoch=1)  # type: ignore[arg-type]
    assert resumed.epoch_of(0) == (1, 0) and resumed.shard(1).tolist() == a[0].shard(1).tolist()


@pytest.mark.parametrize("world", [2, 3])
def test_validation_sees_every_image_once(tmp_path: Path, world: int) -> None:
    idx = make_index(tmp_path, 10)
    files = [f for r in range(world) for b in DaliValLoader(idx, 64, 4, r, world, CPU) for f in b["im_file"]]
    assert sorted(files) == sorted(idx.im_files)


def test_validation_can_run_every_epoch(tmp_path: Path) -> None:
    idx = make_index(tmp_path, 5)
    loader = DaliValLoader(idx, 64, 2, 0, 1, CPU)
    assert [len([f for b in loader for f in b["im_file"]]) for _ in range(3)] == [5, 5, 5]


def test_all_background_batch(tmp_path: Path) -> None:
    idx = make_index(tmp_path, 4)
    for f in (tmp_path / "ds/labels/train").iterdir():
        f.write_text("")
    empty = build_index([tmp_path / "ds/images/train"], 3, tmp_path / "cache2", "train")
    batch = next(iter(DaliValLoader(empty, 64, 4, 0, 1, CPU)))
    assert batch["img"].shape == (4, 3, 64, 64) and batch["cls"].shape == (0, 1) and batch["bboxes"].shape == (0, 4)
    assert len(idx) == 4


def test_fewer_images_than_a_batch_make_one_short_batch(tmp_path: Path) -> None:
    idx = make_index(tmp_path, 4)  # 2 per rank: one batch of 2 per epoch (the tail used to be dropped)
    with pytest.raises(ValueError, match="loader_batches_per_epoch"):
        DaliTrainStream(idx, 64, 4, 2, 0, 2, seed=0, augment=NO_AUGMENT, settings=CPU, mosaic_until=0)
    stream = iter(DaliTrainStream(idx, 64, 4, 1, 0, 2, seed=0, augment=NO_AUGMENT, settings=CPU, mosaic_until=0))
    assert [next(stream)["img"].shape[0] for _ in range(3)] == [2, 2, 2]


def test_backend_choice(monkeypatch: pytest.MonkeyPatch) -> None:
    from yolo_ddp.config import DataConfig
    from yolo_ddp.data import loaders

    assert loaders.resolve_backend(DataConfig(), torch.device("cpu")) == "torch"  # measured faster on CPU
    assert loaders.resolve_backend(DataConfig(), torch.device("cuda", 0)) == "dali"
    assert loaders.resolve_backend(DataConfig(backend="dali"), torch.device("cpu")) == "dali"
    monkeypatch.setitem(__import__("sys").modules, "nvidia.dali", None)  # as if DALI failed to install
    assert loaders.resolve_backend(DataConfig(), torch.device("cuda", 0)) == "torch"
    with pytest.raises(ValueError, match="data.backend=dali needs NVIDIA DALI"):
        loaders.resolve_backend(DataConfig(backend="dali"), torch.device("cpu"))


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="DALI mixed (nvJPEG) decode needs a CUDA GPU")
@pytest.mark.parametrize("mosaic", [0.0, 1.0])
def test_mixed_decode_matches_cpu_pipeline(tmp_path: Path, mosaic: float) -> None:
    """nvJPEG + GPU resize/slice/flip/HSV beside torch in one process give the CPU pipeline's batch."""
    idx, s = make_index(tmp_path, 8, "jpg"), 96
    aug = Augment(mosaic=mosaic)
    out = {}
    for name, device_id in (("cpu", None), ("gpu", 0)):
        stream = DaliTrainStream(idx, s, 4, 2, 0, 1, 0, aug, DaliSettings(device_id), mosaic_until=99)
        out[name] = next(iter(stream))
    assert out["gpu"]["img"].is_cuda and torch.equal(out["gpu"]["bboxes"], out["cpu"]["bboxes"])
    assert (out["gpu"]["img"].cpu().float() - out["cpu"]["img"].float()).abs().mean() < 2.0


def test_batches_come_as_a_channels_last_view_of_dalis_hwc_output(tmp_path: Path) -> None:
    """No CHW transpose in the graph: the NCHW batch is a permuted view, laid out as a channels_last model wants."""
    idx = make_index(tmp_path, 4)
    batch = next(iter(DaliValLoader(idx, 64, 4, 0, 1, CPU)))
    img = batch["img"]
    assert img.shape == (4, 3, 64, 64) and img.is_contiguous(memory_format=torch.channels_last)
    train = next(iter(DaliTrainStream(idx, 64, 2, 2, 0, 1, seed=0, augment=NO_AUGMENT, settings=CPU,
                                      mosaic_until=0)))
    assert train["img"].is_contiguous(memory_format=torch.channels_last)


def cpus(monkeypatch: pytest.MonkeyPatch, allowed: int, quota: float | None, node: int = 128) -> None:
    """A rank allowed `allowed` CPUs (affinity) under a cgroup quota of `quota` CPUs, on a `node`-CPU machine."""
    monkeypatch.setattr("os.cpu_count", lambda: node)
    monkeypatch.setattr("os.sched_getaffinity", lambda pid: set(range(allowed)))
    monkeypatch.setattr("yolo_ddp.topology.affinity.cgroup_cpu_quota", lambda: quota)


def test_source_workers_auto_is_parallel_on_a_gpu_and_inline_on_cpu(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "1")
    cpus(monkeypatch, allowed=16, quota=None, node=16)
    assert DaliSettings(device_id=0).source_workers() == 4  # the default (-1) on a 16-core GPU node
    assert DaliSettings(device_id=None).source_workers() == 0  # DALI's CPU threads have the cores already
    assert DaliSettings(device_id=0, py_workers=0).source_workers() == 0  # an explicit choice stands
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "8")
    assert DaliSettings(device_id=0).source_workers() == 1  # 2 cores per rank


def test_source_workers_follow_the_ranks_cpus_not_the_machines(monkeypatch: pytest.MonkeyPatch) -> None:
    """os.cpu_count() is the machine's 128 CPUs; the rank may use fewer: its affinity, the container's quota."""
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "1")
    cpus(monkeypatch, allowed=4, quota=None)  # a cpuset of 4 CPUs (or pinned to them)
    assert DaliSettings(device_id=0).source_workers() == 2
    assert DaliSettings(device_id=None).num_threads() == 4
    cpus(monkeypatch, allowed=128, quota=2.5)  # docker --cpus=2.5: every CPU visible, 2.5 CPUs of time
    assert DaliSettings(device_id=0).source_workers() == 1
    assert DaliSettings(device_id=None).num_threads() == 2
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "8")
    cpus(monkeypatch, allowed=64, quota=16.0)  # pinned to a 64-CPU NUMA node, 16 CPUs for the 8 ranks
    assert DaliSettings(device_id=0).source_workers() == 1
    assert DaliSettings(device_id=None).num_threads() == 2


def test_validation_runs_its_source_inline(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """No parallel-source processes idle between evaluations, whatever data.dali.py_workers says."""
    cpus(monkeypatch, allowed=16, quota=None, node=16)
    assert DaliSettings(device_id=0).source_workers(train=False) == 0
    assert DaliSettings(device_id=0, py_workers=4).source_workers(train=False) == 0
    loader = DaliValLoader(make_index(tmp_path, 4), 64, 2, 0, 1, DaliSettings(device_id=None, threads=1,
                                                                               py_workers=2))
    assert len(list(loader)) == 2
    assert all(pipe._py_pool is None for pipe in loader._it._pipes)  # DALI started no worker pool


def test_cgroup_cpu_quota_v2_and_v1(tmp_path: Path) -> None:
    from yolo_ddp.topology.affinity import cgroup_cpu_quota

    proc = tmp_path / "cgroup"
    proc.write_text("0::/kubepods/pod1/ctr\n")
    (tmp_path / "kubepods/pod1/ctr").mkdir(parents=True)
    assert cgroup_cpu_quota(tmp_path, proc) is None  # no cpu.max anywhere: no quota
    (tmp_path / "kubepods/pod1/ctr/cpu.max").write_text("max 100000\n")
    (tmp_path / "kubepods/pod1/cpu.max").write_text("400000 100000\n")
    assert cgroup_cpu_quota(tmp_path, proc) == 4.0  # the pod's limit binds its container too
    (tmp_path / "cpu.max").write_text("250000 100000\n")
    assert cgroup_cpu_quota(tmp_path, proc) == 2.5  # the smallest along the path
    proc.write_text("2:cpuacct:/\n1:cpu:/docker/abc\n0::/\n")
    (tmp_path / "cpu/docker/abc").mkdir(parents=True)
    (tmp_path / "cpu/docker/abc/cpu.cfs_quota_us").write_text("150000\n")
    (tmp_path / "cpu/docker/abc/cpu.cfs_period_us").write_text("100000\n")
    assert cgroup_cpu_quota(tmp_path, proc) == 1.5
    from yolo_ddp.config import DaliConfig

    assert DaliConfig().py_workers == -1
    with pytest.raises(ValueError, match="data.dali.py_workers"):
        DaliConfig(py_workers=-2)


@pytest.mark.slow
def test_parallel_source_workers_give_the_inline_sources_batches(tmp_path: Path) -> None:
    """The sources pickle into DALI's spawned workers and produce the same samples there (what a GPU runs)."""
    idx = make_index(tmp_path, 6)
    aug = Augment(mosaic=1.0)

    def first_two(workers: int) -> list[dict]:
        settings = DaliSettings(device_id=None, threads=1, py_workers=workers)
        stream = DaliTrainStream(idx, 64, 2, 3, 0, 1, seed=3, augment=aug, settings=settings, mosaic_until=9)
        return list(itertools.islice(iter(stream), 2))

    for inline, parallel in zip(first_two(0), first_two(1), strict=True):
        assert inline["im_file"] == parallel["im_file"] and torch.equal(inline["img"], parallel["img"])
        assert torch.equal(inline["bboxes"], parallel["bboxes"]) and torch.equal(inline["cls"], parallel["cls"])
