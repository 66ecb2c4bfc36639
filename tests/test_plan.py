"""Run-plan arithmetic: global batch split, accumulation toward the nominal batch, AMP agreement."""

from __future__ import annotations

import math

import pytest
import torch

from yolo_ddp.config import TrainConfig
from yolo_ddp.plan import local_amp_mode, make_plan, split_global_batch


def test_global_batch_splits_evenly():
    assert split_global_batch(64, 4) == 16
    with pytest.raises(ValueError, match=r"train\.batch=10 .*split evenly over 4 ranks.*train\.batch=8"):
        split_global_batch(10, 4)


@pytest.mark.parametrize(("batch", "world", "accumulate"), [(16, 1, 4), (16, 2, 4), (32, 4, 2), (64, 8, 1), (128, 8, 1)])
def test_nominal_batch_is_kept_across_world_sizes(batch, world, accumulate):
    plan = make_plan(TrainConfig(batch=batch, nbs=64), 640, world, "off", "cpu", train_images=10_000)
    assert plan.batch_per_rank * world == batch
    assert plan.accumulate == accumulate
    assert plan.effective_batch == batch * accumulate
    assert plan.weight_decay == pytest.approx(5e-4 * plan.effective_batch / 64)
    assert plan.loader_batches_per_epoch == math.ceil(10_000 / batch)  # every image, every epoch
    assert plan.steps_per_epoch == math.ceil(math.ceil(10_000 / batch) / accumulate)


def test_global_batch_above_nominal_is_accepted_with_a_warning():
    plan = make_plan(TrainConfig(batch=128, nbs=64), 640, 8, "off", "cpu", train_images=10_000)
    assert plan.accumulate == 1 and plan.effective_batch == 128
    assert plan.weight_decay == pytest.approx(5e-4 * 2)
    [warning] = plan.warnings()
    assert "train.batch=128" in warning and "train.nbs=64" in warning and "train.nbs=128" in warning
    assert f"WARNING: {warning}" in plan.describe()
    assert make_plan(TrainConfig(batch=64, nbs=64), 640, 8, "off", "cpu", 10_000).warnings() == []


def test_accumulation_is_capped_by_the_run_as_ultralytics():
    """Ultralytics caps accumulate at the run's batches (len(loader) * epochs), not one epoch's; an epoch here then
    ends with a step over its 3 batches."""
    plan = make_plan(TrainConfig(batch=8, nbs=64, epochs=100), 320, 2, "off", "cpu", train_images=24)
    assert plan.loader_batches_per_epoch == 3 and plan.accumulate == 8 and plan.steps_per_epoch == 1
    one_epoch = make_plan(TrainConfig(batch=8, nbs=64, epochs=2), 320, 2, "off", "cpu", train_images=24)
    assert one_epoch.accumulate == 6


def test_every_image_trains_every_epoch():
    """100 images, batch 16, nbs 64: 7 loader batches (the last holds 4 images) in 2 steps, none dropped."""
    plan = make_plan(TrainConfig(batch=16, nbs=64, epochs=10, warmup_epochs=0), 320, 1, "off", "cpu", 100)
    assert plan.loader_batches_per_epoch == 7 and plan.schedule.steps_in_epoch(3) == [4, 3]
    two = make_plan(TrainConfig(batch=16, nbs=64, epochs=10, warmup_epochs=0), 320, 2, "off", "cpu", 99)
    assert two.loader_batches_per_epoch == 7  # ceil(99 / 2) = 50 per rank (one repeat pads), batches of 8


def test_fewer_images_than_a_batch_train_as_one_partial_batch():
    plan = make_plan(TrainConfig(batch=64), 320, 2, "off", "cpu", train_images=10)
    assert plan.loader_batches_per_epoch == 1
    with pytest.raises(ValueError, match="no images"):
        make_plan(TrainConfig(batch=64), 320, 2, "off", "cpu", train_images=0)


def test_sync_bn_auto_below_the_devices_threshold():
    # GPUs: 8 ranks x 8 (global 64) keep per-rank BN, as `yolo train` does; 8 x 4 is where BN breaks.
    assert not make_plan(TrainConfig(batch=64), 640, 8, "bf16", "cuda", 10000).sync_bn
    assert make_plan(TrainConfig(batch=32), 640, 8, "bf16", "cuda", 10000).sync_bn
    # CPU (gloo): below 16 per rank, measured (bench/RESULTS.md).
    assert make_plan(TrainConfig(batch=16), 320, 2, "off", "cpu", 1000).sync_bn
    assert not make_plan(TrainConfig(batch=32), 320, 2, "off", "cpu", 1000).sync_bn
    assert not make_plan(TrainConfig(batch=16, sync_bn_below_cpu=8), 320, 2, "off", "cpu", 1000).sync_bn
    assert make_plan(TrainConfig(batch=64, sync_bn_below=16), 640, 8, "bf16", "cuda", 10000).sync_bn
    single = make_plan(TrainConfig(batch=4, sync_bn="on"), 320, 1, "off", "cpu", 1000)
    assert not single.sync_bn


def test_amp_on_cpu_is_off_unless_bf16_asked():
    cpu = torch.device("cpu")
    assert local_amp_mode("auto", cpu) == "off"
    assert local_amp_mode("fp16", cpu) == "off"
    assert local_amp_mode("bf16", cpu) == "bf16"


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_amp_on_gpu_prefers_bf16():
    dev = torch.device("cuda", 0)
    native = torch.cuda.is_bf16_supported(including_emulation=False)
    assert local_amp_mode("auto", dev) == ("bf16" if native else "fp16")


# (compute capability, emulated bf16 works): torch.cuda.is_bf16_supported() says True for both by default.
GPUS = {"T4": ((7, 5), True), "A100": ((8, 0), True), "V100": ((7, 0), True)}


@pytest.mark.parametrize(("gpu", "auto", "bf16_asked"), [("T4", "fp16", "fp16"), ("V100", "fp16", "fp16"),
                                                          ("A100", "bf16", "bf16")])
def test_amp_auto_takes_bf16_only_where_it_is_native(monkeypatch, gpu, auto, bf16_asked):
    """A T4 (sm 7.5) runs bf16 only by emulation, many times slower than fp16 on its tensor cores."""
    cc, emulated = GPUS[gpu]

    def is_bf16_supported(including_emulation: bool = True) -> bool:  # torch's contract, on a `gpu`
        return cc >= (8, 0) or (including_emulation and emulated)

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", is_bf16_supported)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: cc)
    dev = torch.device("cuda", 0)
    assert local_amp_mode("auto", dev) == auto
    assert local_amp_mode("bf16", dev) == bf16_asked
    assert local_amp_mode("fp16", dev) == "fp16" and local_amp_mode("off", dev) == "off"


def test_sync_bn_auto_default_gives_bn_ultralytics_default_batch():
    """2 ranks x 8 (a global 16) syncs BN so it trains what 1 x 16 does; 16 per rank is left alone."""
    assert make_plan(TrainConfig(batch=16, nbs=16), 256, 2, "off", "cpu", 256).sync_bn
    assert not make_plan(TrainConfig(batch=32, nbs=32), 256, 2, "off", "cpu", 256).sync_bn
