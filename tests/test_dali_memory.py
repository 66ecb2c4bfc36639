"""DALI's GPU memory in the memory plan (the formula in yolo_ddp/memory/dali_buffers.py), and a DALI allocation
failure turned into the one-paragraph advice a torch OOM gets. CPU only: the arithmetic and the error path."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from tests.red_boxes import make_index
from yolo_ddp.config import Config, DaliConfig, DataConfig
from yolo_ddp.data import dali as dali_backend
from yolo_ddp.data.dali import DaliOutOfMemory, DaliSettings, DaliTrainStream, DaliValLoader
from yolo_ddp.data.dali_source import NO_AUGMENT
from yolo_ddp.memory.dali_buffers import DaliBuffers, is_dali_out_of_memory, typical_source_pixels
from yolo_ddp.memory.estimate import Estimate
from yolo_ddp.memory.oom import OOMUnrecoverable
from yolo_ddp.memory.planner import Candidate, largest_fitting, plan_memory
from yolo_ddp.memory.run import dali_buffers_for

MiB, GiB = 2**20, 2**30
PX640 = 640 * 640

# What DALI 2.4's iterator raises when its allocator fails (the pipeline's error wrapping around the messages of
# dali/core/cuda_error.h CUDABadAlloc and of the CUDA runtime).
DALI_OOM_MESSAGES = [
    "Critical error in pipeline:\nError in MIXED operator `nvidia.dali.fn.decoders.image`,\nwhich was used in the "
    "pipeline definition with the following traceback:\n\n  File \"dali.py\", line 60, in _image\n\nencountered:\n\n"
    "Can't allocate 402653184 bytes on device 0.\nCurrent pipeline object is no longer valid.",
    "Critical error in pipeline:\nError in GPU operator `nvidia.dali.fn.resize`,\nencountered:\n\nCUDA allocation failed",
    "CUDA runtime API error cudaErrorMemoryAllocation (2):\nout of memory",
]


def test_buffer_formula_per_image_and_fixed() -> None:
    b = DaliBuffers(source_pixels=PX640, imgsz=640, prefetch=2, mosaic=True, scale=0.5)
    train = 3 * (4 * PX640 + 4 * 960 * 960 + 4 * PX640)  # 4 decoded tiles, 4 resized up to 1.5 x 640, 4 canvases
    val = 3 * (PX640 + PX640 + 4 * PX640)  # one tile, never scaled up
    assert b.per_image == 3 * (train + 2 * val)  # prefetch 2 + the batch handed out; val batch is twice as big
    assert b.fixed == 2 * 256 * MiB  # decoder state of the training and validation pipelines
    assert 100 * MiB < b.per_image < 150 * MiB  # ~130 MiB per image of micro-batch at 640 px with mosaic
    no_mosaic = replace(b, mosaic=False, prefetch=1)
    assert no_mosaic.per_image == 2 * (3 * (PX640 + 960 * 960 + 4 * PX640) + 2 * val)
    big_sources = replace(b, source_pixels=4 * PX640)  # 1280 px photographs: the decode buffers grow, not the canvas
    assert big_sources.per_image - b.per_image == 3 * 3 * (4 * 3 * PX640 + 2 * 3 * PX640)


def test_typical_source_pixels_ignores_a_rare_panorama() -> None:
    shapes = np.array([[480, 640]] * 199 + [[4000, 12000]], np.int32)
    assert typical_source_pixels(shapes) < 2 * 480 * 640
    assert typical_source_pixels(np.zeros((0, 2), np.int32)) == 0


def _estimate(dali: DaliBuffers | None) -> Estimate:
    return Estimate(1 * GiB, 0, 0, 0, 0, 0, 200 * MiB, 640, "bf16", dali=dali)


def test_estimate_adds_dali_per_image_and_fixed_and_scales_it_with_imgsz() -> None:
    dali = DaliBuffers(PX640, 640, 2, True, 0.5)
    plain, with_dali = _estimate(None), _estimate(dali)
    assert with_dali.total(16) - plain.total(16) == dali.fixed + 16 * dali.per_image
    parts = with_dali.components(16)
    assert parts["DALI buffers (16 img)"] == 16 * dali.per_image and parts["DALI decoder state"] == dali.fixed
    assert sum(parts.values()) == with_dali.total(16)
    smaller = with_dali.at_imgsz(320)  # the imgsz rung: DALI's canvas shrinks, the decoded sources do not
    assert smaller.dali == replace(dali, imgsz=320)
    assert dali.per_image > smaller.dali.per_image > 3 * 4 * PX640 * 3


def test_auto_batch_leaves_room_for_dali() -> None:
    dali = DaliBuffers(PX640, 640, 2, True, 0.5)
    budget = 8 * GiB
    assert largest_fitting(_estimate(None), budget, 64) == 7 * GiB // (200 * MiB)  # 35 without DALI
    with_dali = _estimate(dali)
    chosen = largest_fitting(with_dali, budget, 64)
    assert chosen == (budget - with_dali.fixed) // (200 * MiB + dali.per_image)
    assert chosen < 35 and with_dali.total(chosen) <= budget < with_dali.total(chosen + 1)
    plan = plan_memory(Candidate("yolov8n.yaml", 640, "bf16", 64), True, 64, budget, budget, "cuda:0", (),
                       "bf16", lambda model, imgsz, amp: with_dali)
    assert plan.chosen.batch_per_rank == chosen and "DALI buffers" in plan.describe()


def test_the_plan_budgets_dali_only_where_dali_decodes_on_a_gpu() -> None:
    cfg = Config(data=DataConfig(imgsz=640, dali=DaliConfig(prefetch=3)))
    gpu = dali_buffers_for(cfg, torch.device("cuda", 0), 480 * 640, "dali")
    assert gpu == DaliBuffers(480 * 640, 640, 3, True, cfg.data.scale)
    assert dali_buffers_for(cfg, torch.device("cuda", 0), None, "dali").source_pixels == PX640  # unknown: imgsz^2
    assert dali_buffers_for(cfg, torch.device("cpu"), 480 * 640, "dali") is None  # host memory: not in a GPU plan
    assert dali_buffers_for(cfg, torch.device("cuda", 0), 480 * 640, "torch") is None


@pytest.mark.parametrize("message", DALI_OOM_MESSAGES)
def test_dali_allocation_failures_are_recognised(message: str) -> None:
    assert is_dali_out_of_memory(RuntimeError(message))
    assert is_dali_out_of_memory(MemoryError("std::bad_alloc: CUDA allocation failed"))


def test_other_dali_errors_are_not_out_of_memory() -> None:
    assert not is_dali_out_of_memory(RuntimeError("Critical error in pipeline:\nError in CPU operator "
                                                  "`nvidia.dali.fn.decoders.image`: Unrecognized image format"))
    assert not is_dali_out_of_memory(ValueError("out of memory"))  # not what DALI raises


class FailingIterator:
    """Stands in for DALIGenericIterator once the device is full: DALI's own message, as its iterator raises."""

    def __init__(self, message: str) -> None:
        self.message = message

    def __iter__(self):
        return self

    def __next__(self):
        raise RuntimeError(self.message)


@pytest.mark.parametrize("message", DALI_OOM_MESSAGES[:2])
def test_dali_oom_in_the_training_stream_gives_the_oom_advice(tmp_path: Path, monkeypatch, message: str) -> None:
    idx = make_index(tmp_path, 4)
    monkeypatch.setattr(dali_backend, "_iterator", lambda pipe, train: FailingIterator(message))
    gpu = DaliSettings(device_id=0, prefetch=2)
    monkeypatch.setattr(dali_backend, "_pipeline", lambda *a, **k: None)  # no GPU here to build one on
    stream = iter(DaliTrainStream(idx, 64, 2, 1, 0, 2, seed=0, augment=NO_AUGMENT, settings=gpu, mosaic_until=0))
    with pytest.raises(DaliOutOfMemory) as info:
        next(stream)
    text = str(info.value)
    assert isinstance(info.value, OOMUnrecoverable) and "\n" not in text  # one paragraph, as a torch OOM's
    assert text.startswith("Out of memory in DALI on cuda:0 while preparing a training batch")
    assert ("(Can't allocate 402653184 bytes on device 0.)" in text if "Can't" in message
            else "(CUDA allocation failed)" in text)  # DALI's own line, not its traceback
    for knob in ("data.dali.prefetch=2", "train.batch", "train.memory_fraction", "data.backend=torch"):
        assert knob in text


def test_dali_oom_in_validation_and_other_errors_pass_through(tmp_path: Path, monkeypatch) -> None:
    idx = make_index(tmp_path, 4)
    monkeypatch.setattr(dali_backend, "_pipeline", lambda *a, **k: None)
    monkeypatch.setattr(dali_backend, "_iterator", lambda pipe, train: FailingIterator(DALI_OOM_MESSAGES[0]))
    with pytest.raises(DaliOutOfMemory, match="while preparing a validation batch"):
        next(iter(DaliValLoader(idx, 64, 2, 0, 1, DaliSettings(device_id=0))))
    monkeypatch.setattr(dali_backend, "_iterator", lambda pipe, train: FailingIterator("Unrecognized image format"))
    with pytest.raises(RuntimeError, match="Unrecognized image format") as info:
        next(iter(DaliValLoader(idx, 64, 2, 0, 1, DaliSettings(device_id=0))))
    assert not isinstance(info.value, OOMUnrecoverable)
