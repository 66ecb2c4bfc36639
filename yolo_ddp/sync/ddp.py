"""The three calls `train.py` makes: probe + NCCL env before init, plan after the model exists, DDP wrap."""

from __future__ import annotations

import logging
from copy import deepcopy

import torch
from torch.nn.parallel import DistributedDataParallel as DDP

from yolo_ddp import dist
from yolo_ddp.config import SyncConfig
from yolo_ddp.sync.cost import Workload
from yolo_ddp.sync.hooks import register_comm_hook
from yolo_ddp.sync.plan import SyncPlan, apply_nccl_env, choose_sync, refuse_powersgd_with_fp16
from yolo_ddp.topology.affinity import pin_to_gpu_cpus
from yolo_ddp.topology.model import NodeTopology
from yolo_ddp.topology.probe import gather_job_topology, node_topology_before_init

log = logging.getLogger("yolo_ddp.sync")


def prepare_node(backend: str) -> NodeTopology:
    """Probe this node (local rank 0, shared with the other local ranks) and set NCCL's environment."""
    node = node_topology_before_init()
    if backend != "gloo" and torch.cuda.is_available():
        for line in apply_nccl_env(node, backend):
            log.info(f"NCCL env: {line}")
        if pinned := pin_to_gpu_cpus(node, dist.get_local_rank()):  # before any thread the group or loaders start
            log.info(pinned)
    return node


def model_gflops(model: torch.nn.Module, imgsz: int) -> float:
    """Forward GFLOPs per image at `imgsz` (Ultralytics' thop count) on an eval-mode copy.

    The copy keeps BatchNorm statistics untouched and SyncBatchNorm from issuing collectives.
    """
    from ultralytics.utils.torch_utils import get_flops

    return get_flops(deepcopy(model).eval(), imgsz)


def plan_sync(cfg: SyncConfig, node: NodeTopology, model: torch.nn.Module, imgsz: int, batch_per_rank: int,
              device: torch.device, amp: str = "off", requested_amp: str = "") -> SyncPlan:
    """Rank 0 decides from every node's probe; every rank gets the same plan (`amp`: the run's agreed mode)."""
    refuse_powersgd_with_fp16(cfg.strategy, amp, requested_amp or amp)  # on every rank: none waits for rank 0
    job = gather_job_topology(node)
    plan = None
    if dist.is_main():
        gflops = model_gflops(model, imgsz) if cfg.strategy == "auto" and dist.get_world_size() > 1 else 0.0
        plan = choose_sync(cfg, job, Workload.of_model(model, gflops, batch_per_rank), dist.get_world_size(),
                           device.type, amp, requested_amp)
    return dist.broadcast_object(plan)


def wrap_ddp(model: torch.nn.Module, device: torch.device, plan: SyncPlan, cfg: SyncConfig) -> DDP:
    ddp = DDP(model, device_ids=[device.index] if device.type == "cuda" else None, bucket_cap_mb=plan.bucket_cap_mb)
    register_comm_hook(ddp, plan.strategy, cfg)
    return ddp
