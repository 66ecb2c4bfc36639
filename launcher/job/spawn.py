"""Start one DDP job's workers through torch's own elastic launcher (what torchrun runs inside).

`LaunchConfig`'s defaults differ from the torchrun CLI, so every field that matters is set here.
Workers are fresh interpreters running `python -m launcher.worker <resolved config>`; they never
compose with Hydra, so `${hydra:...}` interpolations are already resolved in the file they read.

An OOM that no rank could retry in place (inside SyncBatchNorm or the gradient all-reduce) fails the job after
a rank records half the micro-batch in the run dir (yolo_ddp/memory/oom.py). `launch_job` then starts the job
again with `train.resume=true`, whatever `launcher.max_restarts` says, at most `train.oom_restarts` times.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import re
import socket
import sys
from pathlib import Path

import torch
from omegaconf import OmegaConf
from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
from torch.distributed.launcher.api import LaunchConfig, elastic_launch

from yolo_ddp.config import AUTO_CPU_RANKS, Config, LauncherConfig
from yolo_ddp.memory import oom

log = logging.getLogger("launcher")


def resolve_nproc(nproc_per_node: str) -> int:
    """`auto`: one worker per GPU; AUTO_CPU_RANKS on a machine without GPU."""
    if str(nproc_per_node) != "auto":
        return int(nproc_per_node)
    return torch.cuda.device_count() if torch.cuda.is_available() else AUTO_CPU_RANKS


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


def write_config(config: Config, path: Path) -> None:
    """The resolved config the workers read (`launcher.worker`)."""
    path.write_text(OmegaConf.to_yaml(OmegaConf.structured(config)))


def launch_job(config: Config, config_file: Path, nproc: int, run_id: str) -> None:
    """Run the job; after an OOM inside a collective, again from last.pt at the recorded split (module doc).

    A fresh record is one this launch wrote (`oom.hint_stamp` changed); without one, or with the restarts
    used up, the job's `ChildFailedError` propagates.
    """
    run_dir, limit = Path(config.run_dir), config.train.oom_restarts
    for restart in range(1, limit + 2):
        before = oom.hint_stamp(run_dir)
        try:
            launch_workers(config_file, nproc, config.launcher, run_id)
            return
        except ChildFailedError:
            if oom.hint_stamp(run_dir) in (None, before):
                raise
            if restart > limit:
                log.error(f"Out of memory inside a collective again: train.oom_restarts={limit} restart(s) used up.")
                raise
        hint = oom.read_hint(run_dir)
        resume = (run_dir / "last.pt").exists()  # none yet: the OOM came before the first checkpoint
        log.warning(
            f"OOM restart {restart} of {limit}: a rank ran out of memory inside a collective at optimizer step "
            f"{hint.get('step')}; starting the job again {'from last.pt' if resume else 'from the first step'} "
            f"with each loader batch cut into {hint.get('splits')} micro-batches ({oom.HINT_FILE}); effective batch "
            f"and step count unchanged"
        )
        if resume and config.train.resume is not True:
            config = dataclasses.replace(config, train=dataclasses.replace(config.train, resume=True))
            write_config(config, config_file)
