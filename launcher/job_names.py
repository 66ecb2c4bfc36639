"""W&B group and run name for a job: a multirun's jobs share the sweep id and are named by what the sweep varies.

Used as resolvers in conf/logger/wandb.yaml (`${yolo_ddp_sweep_group:}`, `${yolo_ddp_job_name:}`), so the
names are resolved once, in the job's launcher process, and reach the workers in resolved_config.yaml.
Outside a multirun both are empty and yolo_ddp.logging falls back to the config name and the run dir.
"""

from __future__ import annotations

import json
import os
import sys
from typing import Any

from hydra.core.hydra_config import HydraConfig
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.types import RunMode

from launcher.run_id import run_id

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
    return f"sweep-{run_id().replace('/', '_')}" if _multirun() else ""


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
