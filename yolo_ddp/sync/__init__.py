"""Gradient sync strategy: cost model, choice from the topology, NCCL environment, DDP comm hooks."""

from yolo_ddp.sync.cost import Workload
from yolo_ddp.sync.hooks import register_comm_hook
from yolo_ddp.sync.plan import SyncPlan, apply_nccl_env, choose_sync, nccl_env_for

__all__ = ["SyncPlan", "Workload", "apply_nccl_env", "choose_sync", "nccl_env_for", "register_comm_hook"]
