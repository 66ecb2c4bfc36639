"""The speed switches change how the model runs, not what it computes (yolo_ddp/engine/speed.py)."""

from __future__ import annotations

import shutil

import pytest
import torch

from yolo_ddp.config import ModelConfig, TrainConfig
from yolo_ddp.engine.loop import load_optimizer_state
from yolo_ddp.engine.model import build_model, loss_criterion
from yolo_ddp.engine.optim import OptimizerChoice, build_optimizer
from yolo_ddp.engine.speed import configure_backends, describe, to_memory_format, training_forward

NAMES = {0: "a", 1: "b"}
IMGSZ = 64


def _model(channels_last: bool) -> torch.nn.Module:
    torch.manual_seed(0)
    model = build_model(ModelConfig(cfg="yolov8n.yaml"), NAMES, TrainConfig(), IMGSZ)
    return to_memory_format(model, TrainConfig(channels_last=channels_last)).train()


def _batch() -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    img = torch.rand(4, 3, IMGSZ, IMGSZ, generator=torch.Generator().manual_seed(1))
    targets = {"batch_idx": torch.tensor([0.0, 1.0, 3.0]), "cls": torch.tensor([[0.0], [1.0], [0.0]]),
               "bboxes": torch.tensor([[0.5, 0.5, 0.3, 0.2], [0.3, 0.6, 0.2, 0.4], [0.7, 0.3, 0.25, 0.25]])}
    return img, targets


def _loss_and_grads(model: torch.nn.Module, forward: torch.nn.Module | None = None):
    img, targets = _batch()
    loss, _ = loss_criterion(model)((model if forward is None else forward)(img), targets)
    loss.sum().backward()
    return loss.detach(), torch.cat([p.grad.flatten() for p in model.parameters() if p.grad is not None])


def test_channels_last_gives_the_same_loss_and_gradients():
    loss_nchw, grads_nchw = _loss_and_grads(_model(False))
    model = _model(True)
    conv = next(m for m in model.modules() if isinstance(m, torch.nn.Conv2d))
    assert conv.weight.is_contiguous(memory_format=torch.channels_last)
    loss_nhwc, grads_nhwc = _loss_and_grads(model)
    torch.testing.assert_close(loss_nhwc, loss_nchw, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(grads_nhwc, grads_nchw, rtol=1e-3, atol=1e-4)  # summation order differs


@pytest.mark.parametrize("name", ["SGD", "AdamW"])
def test_fused_optimizer_step_equals_the_plain_one(name):
    updated = []
    for fused in (False, True):
        model = _model(False)
        _loss_and_grads(model)
        optimizer = build_optimizer(model, OptimizerChoice(name, 0.01, 0.9), 5e-4, fused=fused)
        assert optimizer.defaults.get("fused") is (True if fused else None)
        optimizer.step()
        updated.append(torch.cat([p.detach().flatten() for p in model.parameters()]))
    torch.testing.assert_close(updated[1], updated[0], rtol=1e-5, atol=1e-7)


def test_fused_optimizer_skips_a_step_with_inf_gradients_under_grad_scaler():
    """fp16's GradScaler hands the inf flag to the fused kernel (no host sync), which must then skip the update."""
    model = _model(False)
    scaler = torch.amp.GradScaler("cpu", init_scale=1024.0)
    img, targets = _batch()
    loss, _ = loss_criterion(model)(model(img), targets)
    scaler.scale(loss.sum()).backward()
    next(model.parameters()).grad[0] = float("inf")
    optimizer = build_optimizer(model, OptimizerChoice("SGD", 0.01, 0.9), 5e-4, fused=True)
    before = [p.detach().clone() for p in model.parameters()]
    scaler.unscale_(optimizer)  # the loop unscales first, to clip gradients
    scaler.step(optimizer)
    scaler.update()
    assert all(torch.equal(a, p) for a, p in zip(before, model.parameters(), strict=True))
    assert scaler.get_scale() == 512.0


@pytest.mark.parametrize("saved_fused", [False, True])
def test_resume_keeps_this_runs_optimizer_kernel(saved_fused):
    """A checkpoint from a run with the other setting must not switch the kernel (GradScaler relies on it)."""
    model = _model(False)
    _loss_and_grads(model)
    saved = build_optimizer(model, OptimizerChoice("SGD", 0.01, 0.9), 5e-4, fused=saved_fused)
    saved.step()
    resumed = build_optimizer(model, OptimizerChoice("SGD", 0.01, 0.9), 5e-4, fused=not saved_fused)
    load_optimizer_state(resumed, saved.state_dict())
    assert all(g["fused"] is (None if saved_fused else True) for g in resumed.param_groups)
    assert resumed.state_dict()["state"].keys() == saved.state_dict()["state"].keys()  # momentum came along


def test_compile_off_trains_the_model_itself():
    model = _model(False)
    assert training_forward(model, TrainConfig(compile=False)) is model


def test_compile_without_a_compiler_names_the_key_and_the_fix(monkeypatch):
    monkeypatch.setenv("PATH", "/nonexistent")
    monkeypatch.delenv("CXX", raising=False)
    with pytest.raises(ValueError, match=r"train\.compile.*g\+\+.*train\.compile=false"):
        configure_backends(TrainConfig(compile=True), torch.device("cpu"))
    configure_backends(TrainConfig(compile=False), torch.device("cpu"))  # nothing to check without compile


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("g++") is None, reason="torch.compile on CPU needs a C++ compiler (g++)")
def test_compiled_forward_matches_eager_and_leaves_the_model_plain():
    """torch.compile needs a C++ compiler on CPU; the compile itself takes about a minute on 2 cores."""
    eager_loss, eager_grads = _loss_and_grads(_model(True))
    model = _model(True)
    keys = list(model.state_dict())
    compiled = training_forward(model, TrainConfig(compile=True))
    loss, grads = _loss_and_grads(model, compiled)
    torch.testing.assert_close(loss, eager_loss, rtol=1e-3, atol=1e-4)
    torch.testing.assert_close(grads, eager_grads, rtol=1e-2, atol=1e-4)
    assert list(model.state_dict()) == keys  # checkpoints, EMA and validation see the plain model


def test_describe_names_every_switch():
    text = describe(TrainConfig(compile=True, channels_last=False), torch.device("cpu"))
    assert text == "speed: channels_last off, fused optimizer on, compile on"


@pytest.mark.parametrize(("deterministic", "benchmark", "want"), [(True, True, False), (False, True, True),
                                                                 (False, False, False)])
def test_deterministic_keeps_cudnn_benchmark_off(deterministic, benchmark, want):
    """The CUDA branch only sets torch's flag, so it runs on CPU: yolo train's deterministic=True never benchmarks."""
    before = torch.backends.cudnn.benchmark
    try:
        configure_backends(TrainConfig(deterministic=deterministic, cudnn_benchmark=benchmark), torch.device("cuda", 0))
        assert torch.backends.cudnn.benchmark is want
    finally:
        torch.backends.cudnn.benchmark = before
