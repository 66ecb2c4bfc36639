"""`python -m launcher ... plan=true`: print what a run would use per rank and exit without training.

Runs in the launching process on this node's first device (GPU 0, else the CPU), with the world size the
job would have; nothing is written and no worker starts.
"""

from __future__ import annotations

import torch

from yolo_ddp.config import Config
from yolo_ddp.data.loaders import resolve_backend
from yolo_ddp.data.select import class_names
from yolo_ddp.data.source import resolve_data_yaml
from yolo_ddp.data.spec import load_data_spec
from yolo_ddp.data.synthetic import CLASS_NAMES
from yolo_ddp.engine.model import build_model
from yolo_ddp.memory import run as memory
from yolo_ddp.memory.planner import MemoryPlan
from yolo_ddp.plan import local_amp_mode


def plan_job(cfg: Config, nproc_per_node: int) -> tuple[MemoryPlan, Config]:
    """The memory plan the job's ranks would make, and the config it leads to; raises MemoryPlanError when
    nothing allowed fits."""
    world = nproc_per_node * cfg.launcher.nnodes
    device = torch.device("cuda", 0) if torch.cuda.is_available() else torch.device("cpu")
    names = load_data_spec(resolve_data_yaml(cfg.data)).names if cfg.data.path else dict(enumerate(CLASS_NAMES))
    names = class_names(cfg.data, names)  # data.single_cls trains one class
    amp = local_amp_mode(cfg.train.amp, device)
    mem = memory.plan_for_run(cfg, names, device, world, amp, build_model, resolve_backend(cfg.data, device),
                              local_ranks=nproc_per_node)
    return mem, memory.apply(cfg, mem, world)


def describe_plan(cfg: Config, nproc_per_node: int) -> str:
    world = nproc_per_node * cfg.launcher.nnodes
    mem, chosen = plan_job(cfg, nproc_per_node)
    global_batch = chosen.train.batch
    accumulate = max(round(cfg.train.nbs / global_batch), 1)
    return "\n".join([
        mem.describe(),
        f"Run: {world} rank(s) ({nproc_per_node} per node x {cfg.launcher.nnodes} node(s)); global batch "
        f"{global_batch} = {mem.chosen.batch_per_rank} per rank; accumulate {accumulate} -> effective batch "
        f"{global_batch * accumulate} (nominal {cfg.train.nbs}); imgsz {chosen.data.imgsz}; model "
        f"{chosen.model.cfg}; amp {mem.chosen.amp}",
        "plan=true: nothing was trained.",
    ])
