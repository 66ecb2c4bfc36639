"""Start one DDP job's workers through torch's own elastic launcher (what torchrun runs inside).

`LaunchConfig`'s defaults differ from the torchrun CLI, so every field that matters is set here.
Workers are fresh interpreters running `python -m launcher.worker <resolved config>`; they never
compose with Hydra, so `${hydra:...}` interpolations are already resolved in the file they read.
"""

from __future__ import annotations

import os
import re
import socket
import sys
from pathlib import Path

import torch
from torch.distributed.launcher.api import LaunchConfig, elastic_launch

from yolo_ddp.config import LauncherConfig


def resolve_nproc(nproc_per_node: str) -> int:
    if str(nproc_per_node) != "auto":
        return int(nproc_per_node)
    return torch.cuda.device_count() if torch.cuda.is_available() else 2


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def rendezvous_id(run_id: str) -> str:
    return re.sub(r"[^A-Za-z0-9_-]", "_", run_id)


def default_omp_threads(nproc: int) -> None:
    """What torchrun does (torch/distributed/run.py): with several workers on the node and no OMP_NUM_THREADS set,
    each worker gets 1, so N ranks' OpenMP pools do not oversubscribe the cores. CPU ranks still size their own
    intra-op pool (torch.set_num_threads in yolo_ddp/engine/train.py); a value the user set is left alone."""
    if "OMP_NUM_THREADS" not in os.environ and nproc > 1:
        os.environ["OMP_NUM_THREADS"] = "1"


def launch_workers(config_file: Path, nproc: int, launcher: LauncherConfig, run_id: str) -> None:
    """Run the job to completion; raises `ChildFailedError` naming the failed ranks if it fails."""
    # Restarted gloo groups fail to reconnect to a TCP store shared with the rendezvous in most tries.
    os.environ["TORCH_DISABLE_SHARE_RDZV_TCP_STORE"] = "1"
    default_omp_threads(nproc)  # workers inherit this process's environment
    endpoint = launcher.rdzv_endpoint or f"127.0.0.1:{free_port()}"
    config = LaunchConfig(
        min_nodes=launcher.nnodes,
        max_nodes=launcher.nnodes,
        nproc_per_node=nproc,
        run_id=rendezvous_id(run_id),
        rdzv_backend="c10d",
        rdzv_endpoint=endpoint,
        rdzv_configs={"join_timeout": 600},
        max_restarts=launcher.max_restarts,
        monitor_interval=launcher.monitor_interval_s,
        start_method="spawn",
        local_addr="127.0.0.1" if not launcher.rdzv_endpoint else None,
    )
    elastic_launch(config, entrypoint=sys.executable)("-m", "launcher.worker", str(config_file))
