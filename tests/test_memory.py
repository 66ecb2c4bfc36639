"""Memory planner on CPU: exact static bytes, the activation probe's scaling, the downgrade ladder."""

from __future__ import annotations

import pytest
import torch

from yolo_ddp.config import OPTIMIZERS, ModelConfig, TrainConfig
from yolo_ddp.engine.model import build_model
from yolo_ddp.engine.optim import build_optimizer, choose_optimizer
from yolo_ddp.memory.estimate import Estimate, activation_bytes_per_image, static_bytes
from yolo_ddp.memory.planner import Candidate, MemoryPlanError, plan_memory, smaller_model

GIB = 2**30
CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def yolov8n() -> torch.nn.Module:
    return build_model(ModelConfig(cfg="yolov8n.yaml"), {0: "a", 1: "b"}, TrainConfig(), 320)


def state_bytes(optimizer: torch.optim.Optimizer) -> int:
    return sum(t.numel() * t.element_size() for s in optimizer.state.values() for t in s.values()
               if torch.is_tensor(t) and t.dim() > 0)


@pytest.mark.parametrize("name", [n for n in OPTIMIZERS if n != "auto"])
def test_static_bytes_match_real_tensors(yolov8n: torch.nn.Module, name: str) -> None:
    """Every optimizer the config accepts plans, with the state Ultralytics' optimizer really keeps."""
    static = static_bytes(yolov8n, name, "off", world_size=2, ema=True)
    params = [p for p in yolov8n.parameters() if p.requires_grad]
    assert static["weights"] == sum(t.numel() * t.element_size() for t in [*yolov8n.parameters(), *yolov8n.buffers()])
    optimizer = build_optimizer(yolov8n, choose_optimizer(TrainConfig(optimizer=name), 2, 100), 5e-4)
    for p in params:
        p.grad = torch.zeros_like(p)
    optimizer.step()  # materialises the state the estimate predicts
    assert static["optimizer"] == state_bytes(optimizer)
    assert static["gradients"] == sum(p.grad.numel() * p.grad.element_size() for p in params)
    assert static["ddp_buckets"] == static["gradients"]  # world 2: DDP keeps one bucketed copy
    assert static_bytes(yolov8n, name, "bf16", 1, False)["amp_weight_cache"] == sum(p.numel() * 2 for p in params)


def test_auto_plans_for_the_larger_of_its_choices(yolov8n: torch.nn.Module) -> None:
    auto = static_bytes(yolov8n, "auto", "off", 1, False)["optimizer"]
    assert "auto" in OPTIMIZERS
    assert auto == max(static_bytes(yolov8n, n, "off", 1, False)["optimizer"] for n in OPTIMIZERS if n != "auto")


def test_activation_probe_scales_with_pixels_and_precision(yolov8n: torch.nn.Module) -> None:
    small = activation_bytes_per_image(yolov8n, 160, CPU, None)
    large = activation_bytes_per_image(yolov8n, 320, CPU, None)
    assert 3.6 < large / small < 4.4  # activations grow with pixels
    half = activation_bytes_per_image(yolov8n, 320, CPU, torch.bfloat16)
    assert 0.4 < half / large < 0.75  # autocast keeps most saved tensors in 16 bits
    running_mean = [m.running_mean.clone() for m in yolov8n.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    activation_bytes_per_image(yolov8n, 160, CPU, None)
    after = [m.running_mean for m in yolov8n.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert all(torch.equal(a, b) for a, b in zip(running_mean, after, strict=True))  # probe runs on a copy


def fake_estimates(per_image_gib: dict[tuple[str, str], float], fixed_gib: float = 1.0):
    """Per (model, amp) activation GiB per image at 640 px; the planner's logic is what is under test."""
    def estimate_for(model: str, imgsz: int, amp: str) -> Estimate:
        e = Estimate(int(fixed_gib * GIB), 0, 0, 0, 0, 0, int(per_image_gib[(model, amp)] * GIB), 640, amp)
        return e.at_imgsz(imgsz)
    return estimate_for


EST = fake_estimates({("yolov8m.yaml", "off"): 1.0, ("yolov8m.yaml", "bf16"): 0.5,
                      ("yolov8s.yaml", "off"): 0.4, ("yolov8s.yaml", "bf16"): 0.2})
START = Candidate("yolov8m.yaml", 640, "off", 16)


def plan(budget_gib: float, allow: tuple[str, ...], auto: bool = False, start: Candidate = START):
    return plan_memory(start, auto, 16, int(budget_gib * GIB), int(budget_gib * GIB), "cuda:0", allow, "bf16", EST)


def test_fits_as_asked() -> None:
    p = plan(20, ("amp", "batch"))
    assert p.chosen == START and p.steps == ()


def test_downgrade_order_amp_then_batch_then_imgsz_then_model() -> None:
    assert plan(9, ("amp", "batch")).chosen == Candidate("yolov8m.yaml", 640, "bf16", 16)
    p = plan(5, ("amp", "batch"))
    assert p.chosen == Candidate("yolov8m.yaml", 640, "bf16", 8) and [s.split(":")[0] for s in p.steps] == ["amp", "batch"]
    p = plan(1.3, ("amp", "batch", "imgsz"))  # batch 1 at 640 needs 1.5 GiB: shrink the image
    assert p.chosen.imgsz < 640 and [s.split(":")[0] for s in p.steps][:2] == ["amp", "batch"]
    p = plan(1.05, ("amp", "batch", "imgsz", "model"))
    assert p.chosen.model_cfg == "yolov8s.yaml" and p.steps[-1].startswith("model:")
    assert "needs" in p.steps[0] and "GiB" in p.steps[0]  # every step logged with before/after numbers


def test_refusal_names_what_would_help() -> None:
    with pytest.raises(MemoryPlanError, match=r"train.allow_downgrade=.*missing \['imgsz', 'model'\]"):
        plan(1.3, ("amp", "batch"))
    with pytest.raises(MemoryPlanError, match="no downgrade was allowed"):
        plan(5, ())


def test_auto_batch_is_the_largest_that_fits_up_to_the_cap() -> None:
    assert plan(9, ("amp", "batch"), auto=True).chosen.batch_per_rank == 8  # (9 - 1) / 1.0 GiB per image
    assert plan(100, ("amp", "batch"), auto=True).chosen.batch_per_rank == 16  # never past nbs / world


def test_smaller_model_family() -> None:
    assert smaller_model("yolov8x.yaml") == "yolov8l.yaml" and smaller_model("yolo11s.yaml") == "yolo11n.yaml"
    assert smaller_model("yolo26m.yaml") == "yolo26s.yaml"
    assert smaller_model("yolov8n.yaml") is None and smaller_model("my_net.yaml") is None
