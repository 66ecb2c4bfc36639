"""One run dir per job, agreed by every rank without talking to each other.

Under torchrun every rank runs `@hydra.main` itself, so Hydra's `${now:...}` would give each rank
(and each elastic restart) its own timestamped dir. The id is derived from what all ranks of a job
share instead:
- an explicit rendezvous id (`torchrun --rdzv-id=ID`, or `YOLO_DDP_RUN_ID`): the id itself, the one
  name all nodes of a multi-node job share;
- plain torchrun (a random uuid or "none" as run id): the start time of the elastic agent, the
  workers' parent, which lives across restarts, plus the id's first characters;
- no agent (the self-spawning launcher's own process): this process's start time.
"""

from __future__ import annotations

import os
import re
import time
from datetime import datetime
from functools import cache
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf

from yolo_ddp.resume import run_dir_for

UUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")


def _process_start(pid: int) -> float:
    """Epoch seconds at which `pid` started (Linux /proc); falls back to now elsewhere."""
    try:
        ticks = int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19])
        boot = next(float(line.split()[1]) for line in Path("/proc/stat").read_text().splitlines()
                    if line.startswith("btime"))
        return boot + ticks / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError, StopIteration):
        return time.time()


def _stamp(t: float) -> str:
    return datetime.fromtimestamp(t).strftime("%Y-%m-%d/%H-%M-%S")


@cache
def run_id() -> str:
    explicit = os.environ.get("YOLO_DDP_RUN_ID")
    if explicit:
        return explicit
    rdzv_id = os.environ.get("TORCHELASTIC_RUN_ID")
    if rdzv_id is None:  # not under an elastic agent
        return _stamp(time.time())
    agent = os.getppid()
    if rdzv_id in ("", "none") or UUID.fullmatch(rdzv_id):  # torchrun made it up: name the dir by time
        suffix = rdzv_id[:8] if rdzv_id not in ("", "none") else f"agent{agent}"
        return f"{_stamp(_process_start(agent))}-{suffix}"
    return rdzv_id  # a user-given --rdzv-id: the one name every node shares


def hydra_output_subdir(resume: Any = False) -> str | None:
    """`.hydra/` is written by rank 0 only; a resumed run records its config in `.hydra/resumed/`, so the
    run's original config is kept (and a resume that fails on a bad checkpoint overwrites nothing)."""
    from launcher.slurm import node_rank

    if int(os.environ.get("RANK", 0)) != 0 or node_rank() != 0:  # a SLURM job's other nodes share the dir
        return None
    return ".hydra/resumed" if resume else ".hydra"


def register_resolvers() -> None:
    from launcher.job_names import job_name, sweep_group  # imports run_id from here

    if not OmegaConf.has_resolver("yolo_ddp_run_id"):
        OmegaConf.register_new_resolver("yolo_ddp_run_id", run_id)
        OmegaConf.register_new_resolver("yolo_ddp_hydra_subdir", hydra_output_subdir)
        OmegaConf.register_new_resolver("yolo_ddp_run_dir", run_dir_for)  # train.resume=PATH: that run's dir
    if not OmegaConf.has_resolver("yolo_ddp_sweep_group"):  # W&B group and run name (conf/logger/wandb.yaml)
        OmegaConf.register_new_resolver("yolo_ddp_sweep_group", sweep_group)
        OmegaConf.register_new_resolver("yolo_ddp_job_name", job_name)
