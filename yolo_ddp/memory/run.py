"""The memory plan for one run: budget from the device, probe on rank 0, the same decision on every rank.

The planner sits below the data and engine stages: the caller passes in how to build the model (the engine's
`build_model`) and which data backend the run resolved, so nothing here imports upward.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import replace

import torch

from yolo_ddp import dist
from yolo_ddp.config import Config, ModelConfig, TrainConfig
from yolo_ddp.memory.dali_buffers import DaliBuffers
from yolo_ddp.memory.estimate import Estimate, estimate
from yolo_ddp.memory.planner import Candidate, MemoryPlan, plan_memory
from yolo_ddp.plan import agree_amp_mode, split_global_batch

STRIDE = 32

# (model config, class names, train config, imgsz) -> an nn.Module: yolo_ddp.engine.model.build_model
ModelBuilder = Callable[[ModelConfig, dict[int, str], TrainConfig, int], torch.nn.Module]


def free_bytes(device: torch.device, local_ranks: int | None = None, host_reserved: int = 0) -> int:
    """Free memory this rank may count on: the GPU's free memory, or its share of the host's available RAM less
    `host_reserved` (a data.cache=ram store about to be written: one per node)."""
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return int(free)
    local_world = local_ranks or int(os.environ.get("LOCAL_WORLD_SIZE", 1))
    try:
        with open("/proc/meminfo") as f:
            info = {line.split(":")[0]: int(line.split()[1]) * 1024 for line in f}
        available = info["MemAvailable"]
    except (OSError, KeyError, ValueError):
        available = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_AVPHYS_PAGES")
    return max(0, available - host_reserved) // local_world


def largest_imgsz(cfg: Config) -> int:
    """The biggest image a step will see: multi-scale's upper end and any progressive-resize stage."""
    sizes = [cfg.data.imgsz, *(size for _, size in cfg.train.imgsz_schedule)]
    if cfg.train.multi_scale:
        sizes.append(max_scaled(cfg.data.imgsz, cfg.train.multi_scale[1]))
    return max(sizes)


def max_scaled(imgsz: int, factor: float) -> int:
    return max(STRIDE, int(imgsz * factor) // STRIDE * STRIDE)


def plan_for_run(cfg: Config, names: dict[int, str], device: torch.device, world: int, amp: str,
                 build_model: ModelBuilder, backend: str, local_ranks: int | None = None,
                 source_pixels: int | None = None, host_reserved: int = 0) -> MemoryPlan:
    """Rank 0 probes and decides against the smallest budget of all ranks; every rank gets that decision.

    `build_model` builds the model a candidate would train; `backend`: the data backend the run resolved
    (`resolve_backend` of yolo_ddp.data.loaders). `source_pixels`: a typical training image's h x w
    (`typical_source_pixels` of the index), for DALI's decode buffers; None: assumed data.imgsz squared.
    """
    free = int(dist.all_reduce_min(float(free_bytes(device, local_ranks)), device))
    budget = int(free * cfg.train.memory_fraction)
    best_amp = agree_amp_mode("auto", device)  # the best mode every rank has natively, not rank 0's alone
    plan = None
    if dist.get_rank() == 0:
        plan = _decide(cfg, names, device, world, amp, free, budget, best_amp, build_model,
                       dali_buffers_for(cfg, device, source_pixels, backend))
    return dist.broadcast_object(plan)


def dali_buffers_for(cfg: Config, device: torch.device, source_pixels: int | None,
                     backend: str) -> DaliBuffers | None:
    """DALI's GPU buffers when this run decodes with DALI (`backend`) on a GPU; None otherwise (the torch
    DataLoader and DALI's CPU pipelines use host memory, which the GPU plan does not cover)."""
    if device.type != "cuda" or backend != "dali":
        return None
    return DaliBuffers(source_pixels or cfg.data.imgsz**2, cfg.data.imgsz, cfg.data.dali.prefetch,
                       mosaic=cfg.data.mosaic > 0, scale=cfg.data.scale)


def _decide(cfg: Config, names: dict[int, str], device: torch.device, world: int, amp: str, free: int,
            budget: int, agreed_best_amp: str, build_model: ModelBuilder,
            dali: DaliBuffers | None = None) -> MemoryPlan:
    probed = largest_imgsz(cfg)
    cache: dict[tuple[str, str], Estimate] = {}
    # DALI's canvas stays data.imgsz at the probed (multi-scale) size; the imgsz rung scales both alike.

    def estimate_for(model_cfg: str, imgsz: int, amp_mode: str) -> Estimate:
        key = (model_cfg, amp_mode)
        if key not in cache:
            model = build_model(replace(cfg.model, cfg=model_cfg), names, cfg.train, probed).to(device)
            cache[key] = replace(estimate(model, probed, device, amp_mode, cfg.train.optimizer, world, cfg.train.ema),
                                 dali=dali)
            del model
        return cache[key].at_imgsz(imgsz) if imgsz != probed else cache[key]

    auto = cfg.train.batch == "auto"
    # batch=auto never grows the global batch past the nominal one: accumulation is what keeps nbs.
    cap = max(1, cfg.train.nbs // world)
    per_rank = cap if auto else split_global_batch(cfg.train.batch, world)
    best_amp = "off" if cfg.train.amp == "off" and "amp" not in cfg.train.allow_downgrade else \
        agreed_best_amp
    if device.type != "cuda":
        best_amp = amp  # CPU autocast is slower than fp32; never switch it on as a memory fix there
    start = Candidate(cfg.model.cfg, probed, amp, per_rank)
    return plan_memory(start, auto, cap, budget, free, str(device), tuple(cfg.train.allow_downgrade), best_amp,
                       estimate_for)


def apply(cfg: Config, plan: MemoryPlan, world: int) -> Config:
    """The config the run trains with: chosen global batch, model and base imgsz (scaled back from the probe)."""
    c = plan.chosen
    imgsz = cfg.data.imgsz
    if c.imgsz != largest_imgsz(cfg):  # downgraded: shrink the base size by the same ladder step
        imgsz = max(STRIDE, int(cfg.data.imgsz * c.imgsz / largest_imgsz(cfg)) // STRIDE * STRIDE)
    schedule = [[e, min(s, imgsz)] for e, s in cfg.train.imgsz_schedule] if imgsz != cfg.data.imgsz else \
        cfg.train.imgsz_schedule
    return replace(cfg, data=replace(cfg.data, imgsz=imgsz), model=replace(cfg.model, cfg=c.model_cfg),
                   train=replace(cfg.train, batch=c.batch_per_rank * world, imgsz_schedule=schedule))
