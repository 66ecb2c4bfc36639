"""The three calls `train.py` makes: probe + NCCL env before init, plan after the model exists, DDP wrap;
and the two DDP states the OOM recovery (yolo_ddp/engine/loop.py) has to keep equal on every rank."""

from __future__ import annotations

import inspect
import logging
from collections.abc import Iterator
from contextlib import contextmanager
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


def buffer_sync_flag(ddp_class: type) -> str:
    """DDP's name for "broadcast buffers before every forward": `forward_sync_buffers` from torch 2.13 on,
    `broadcast_buffers` before (read off the signature). It is also the attribute that holds the flag."""
    params = inspect.signature(ddp_class.__init__).parameters
    return "forward_sync_buffers" if "forward_sync_buffers" in params else "broadcast_buffers"


def wrap_ddp(model: torch.nn.Module, device: torch.device, plan: SyncPlan, cfg: SyncConfig) -> DDP:
    """DDP as Ultralytics configures it, plus gradients that are views into the all-reduce buckets.

    - `forward_sync_buffers=False` (Ultralytics' `broadcast_buffers=False`): no buffer broadcast before every
      forward. Rank 0's BatchNorm statistics still reach every rank at construction, SyncBatchNorm keeps them
      equal from global statistics, and otherwise what reads them on every rank (distributed validation) gets
      rank 0's first (`train.weights_to_validate`); checkpoints are rank 0's. Torch before 2.13 has only
      `broadcast_buffers=False`, which also leaves buffers out of the sync at construction: there they are
      broadcast here first, so both mean the same.
    - `gradient_as_bucket_view=True`: no copy between `.grad` and the buckets, one gradient-sized buffer less.
      Everything that touches gradients here works in place (loss-normaliser `_foreach_mul_`, clipping,
      GradScaler's unscale, comm hooks) or drops them with `zero_grad(set_to_none=True)`, which DDP supports.
    """
    flag = buffer_sync_flag(DDP)
    if flag == "broadcast_buffers":
        dist.broadcast_buffers(model)
    ddp = DDP(model, device_ids=[device.index] if device.type == "cuda" else None, bucket_cap_mb=plan.bucket_cap_mb,
              gradient_as_bucket_view=True, **{flag: False})
    register_comm_hook(ddp, plan.strategy, cfg)
    return ddp


@contextmanager
def forward_alone(model: DDP) -> Iterator[None]:
    """A forward only this rank runs (joining an armed reducer after an OOM) must not broadcast buffers: its
    peers run no forward to match the broadcast, so NCCL would hang and gloo fail."""
    flag = buffer_sync_flag(type(model))
    saved = getattr(model, flag)
    setattr(model, flag, False)
    try:
        yield
    finally:
        setattr(model, flag, saved)


def restart_step(model: DDP) -> None:
    """Put DDP's per-forward buffer-sync decision back to where every optimizer step starts, on every rank.

    DDP broadcasts buffers before a forward when the previous forward synchronised gradients; it records that
    in `require_forward_param_sync` at the end of a forward (`_post_forward`), which a forward that raised OOM
    never reaches. Without this the rank that failed would decide differently from its peers on the redo.
    """
    model.require_forward_param_sync = True  # the previous step's last forward synchronised
