"""What a run reports once: world size, every rank's device, versions, the run plan, topology and sync strategy.

`collect_run_info` is a collective (device names are gathered to rank 0): every rank calls it.
"""

from __future__ import annotations

import contextlib
import platform
import socket
import sys
from importlib import metadata
from typing import Any

import torch

from yolo_ddp import dist
from yolo_ddp.topology.model import NodeTopology, link_matrix_table

PACKAGES = ("torch", "torchvision", "ultralytics", "wandb", "hydra-core", "nvidia-dali-cuda120",
            "nvidia-dali-cuda130")


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"cpu ({platform.processor() or platform.machine()})"


def versions() -> dict[str, str]:
    found = {"python": sys.version.split()[0]}
    for name in PACKAGES:
        with contextlib.suppress(metadata.PackageNotFoundError):
            found[name] = metadata.version(name)
    found["cuda"] = torch.version.cuda or "none"
    if torch.cuda.is_available():
        found["nccl"] = ".".join(map(str, torch.cuda.nccl.version()))
    return found


def collect_run_info(plan: Any, sync_plan: Any, node: NodeTopology, device: torch.device,
                     memory_plan: dict[str, Any] | None = None) -> dict[str, Any]:
    """`plan` is the RunPlan (plan.json), `sync_plan` the chosen gradient sync (yolo_ddp.sync), `memory_plan`
    the memory planner's choice (memory_plan.json)."""
    ranks = dist.gather_objects({"host": socket.gethostname(), "device": device_name(device)}) or []
    return {
        "world_size": dist.get_world_size(),
        "devices": [f"rank{r} {d['host']} {d['device']}" for r, d in enumerate(ranks)],
        "versions": versions(),
        "run_plan": plan.as_dict(),
        "memory_plan": memory_plan or {},
        "sync_strategy": {"strategy": sync_plan.strategy, "requested": sync_plan.requested,
                 "bucket_cap_mb": sync_plan.bucket_cap_mb, "worst_link": sync_plan.worst_link,
                 "reasons": list(sync_plan.reasons)},
        "sync_plan_text": sync_plan.describe(),
        "topology_source": node.source,
        "topology_matrix": link_matrix_table(node),
    }
