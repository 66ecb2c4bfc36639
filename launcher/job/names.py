"""What a job is called: its run dir, agreed by every rank without talking, and its W&B group and run name.

Run dir. Under torchrun every rank runs `@hydra.main` itself, so Hydra's `${now:...}` would give each rank
(and each elastic restart) its own timestamped dir. The id is derived from what all ranks of a job
share instead:
- an explicit rendezvous id (`torchrun --rdzv-id=ID`, or `YOLO_DDP_RUN_ID`): the id itself, the one
  name all nodes of a multi-node job share;
- plain torchrun (a random uuid or "none" as run id): the start time of the elastic agent, the
  workers' parent, which lives across restarts, plus the id's first characters;
- no agent (the self-spawning launcher's own process): this process's start time.

W&B names. A multirun's jobs share the sweep id as group and are named by what the sweep varies. Used as
resolvers in conf/logger/wandb.yaml (`${yolo_ddp_sweep_group:}`, `${yolo_ddp_job_name:}`), so the names are
resolved once, in the job's launcher process, and reach the workers in resolved_config.yaml. Outside a
multirun both are empty and yolo_ddp.logging falls back to the config name and the run dir.
"""

from __future__ import annotations

import json
import os
import re
import sys
import time
from datetime import datetime
from functools import cache
from pathlib import Path
from typing import Any

from hydra.core.hydra_config import HydraConfig
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.types import RunMode
from omegaconf import OmegaConf

from yolo_ddp.engine.resume import run_dir_for

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
    from launcher.job.slurm import node_rank

    if int(os.environ.get("RANK", 0)) != 0 or node_rank() != 0:  # a SLURM job's other nodes share the dir
        return None
    return ".hydra/resumed" if resume else ".hydra"


def register_resolvers() -> None:
    if not OmegaConf.has_resolver("yolo_ddp_run_id"):
        OmegaConf.register_new_resolver("yolo_ddp_run_id", run_id)
        OmegaConf.register_new_resolver("yolo_ddp_hydra_subdir", hydra_output_subdir)
        OmegaConf.register_new_resolver("yolo_ddp_run_dir", run_dir_for)  # train.resume=PATH: that run's dir
    if not OmegaConf.has_resolver("yolo_ddp_sweep_group"):  # W&B group and run name (conf/logger/wandb.yaml)
        OmegaConf.register_new_resolver("yolo_ddp_sweep_group", sweep_group)
        OmegaConf.register_new_resolver("yolo_ddp_job_name", job_name)
    if not OmegaConf.has_resolver("yolo_ddp_sweep_keys"):  # the dashboard's sweep axes (conf/logger/wandb.yaml)
        OmegaConf.register_new_resolver("yolo_ddp_sweep_keys", lambda: sweep_keys() if _multirun() else [])


SWEEP_ARGV_ENV = "YOLO_DDP_SWEEP_ARGV"


def export_sweep(argv: list[str]) -> None:
    """A sweep's jobs may run in other processes or on other nodes (submitit, SLURM), which inherit this
    environment: give them the sweep id (the sweep dir's name) and the command line that defined the sweep."""
    os.environ["YOLO_DDP_RUN_ID"] = run_id()
    os.environ[SWEEP_ARGV_ENV] = json.dumps(argv[1:])


def sweep_argv() -> list[str]:
    """The sweep's command line, also in a job that submitit started (whose own argv is submitit's)."""
    raw = os.environ.get(SWEEP_ARGV_ENV)
    return json.loads(raw) if raw else sys.argv[1:]


def _multirun() -> bool:
    return HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN


def sweep_group() -> str:
    return sweep_group_name() if _multirun() else ""


def sweep_group_name() -> str:
    """The W&B group of this sweep's jobs: the sweep id (the sweep dir's name)."""
    return f"sweep-{run_id().replace('/', '_')}"


def swept_keys(argv: list[str]) -> list[str]:
    """Keys the command line sweeps over (`train.batch=16,32`, `range(...)`, `choice(...)`), in order."""
    args = [a for a in argv if "=" in a and not a.startswith("-")]
    try:
        overrides = OverridesParser.create().parse_overrides(args)
    except Exception:  # noqa: BLE001 - an unparsable line fails in Hydra itself; naming must not
        return []
    return [o.get_key_element() for o in overrides if o.is_sweep_override()]


def sweep_keys(hydra_cfg: Any = None) -> list[str]:
    """What this sweep varies: the command line's sweep syntax, plus an Optuna sweeper's search space
    (`hydra.sweeper.params` in conf/hydra/sweeper/optuna.yaml, which the command line does not show)."""
    keys = swept_keys(sweep_argv())
    if hydra_cfg is None and HydraConfig.initialized():
        hydra_cfg = HydraConfig.get()
    params = (hydra_cfg.sweeper.get("params") or {}) if hydra_cfg is not None else {}
    return keys + [str(k) for k in params if str(k) not in keys]


def name_from_overrides(job_overrides: list[str], swept: list[str]) -> str:
    """`batch=16,imgsz=640` from the job's overrides; keys are shortened to their last part where unambiguous."""
    pairs = [o.split("=", 1) for o in job_overrides if "=" in o]
    chosen = [(k, v) for k, v in pairs if k.lstrip("+~") in swept] or pairs  # no sweep syntax seen: all of them
    short = [k.lstrip("+~").rsplit(".", 1)[-1] for k, _ in chosen]
    keys = [s if short.count(s) == 1 else k.lstrip("+~") for s, (k, _) in zip(short, chosen, strict=True)]
    return ",".join(f"{k}={v}" for k, (_, v) in zip(keys, chosen, strict=True))


def job_name() -> str:
    if not _multirun():
        return ""
    return name_from_overrides(list(HydraConfig.get().overrides.task), sweep_keys())
