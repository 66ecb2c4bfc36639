"""A multirun's point, decided in the launcher's process before any worker starts.

- A point whose `sweep_row.json` says COMPLETED (a re-run with the same `hydra.sweep.dir`) is skipped and its
  row kept; a point with a `last.pt` but no completed row resumes in its own dir (`train.resume=true`).
- The downgrade ladder (`train.allow_downgrade`) never changes a key the sweep varies: those rungs are dropped
  for this point, and its row says so.
- The point is planned with the memory planner (as `plan=true` does); one that cannot fit is recorded as
  infeasible, with the GiB it needs and has, and no worker starts for it.

What was decided goes to `sweep_point.json` in the job's dir, which the sweep summary reads.
"""

from __future__ import annotations

import json
import logging
import math
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch

from yolo_ddp.config import Config
from yolo_ddp.logging.sweep import POINT_FILE, ROW_FILE, job_row
from yolo_ddp.memory.estimate import GiB
from yolo_ddp.memory.planner import MemoryPlanError

log = logging.getLogger("launcher")

# The config keys each ladder rung would change (`model` is also swept as the config group `model=...`).
RUNG_KEYS = {"amp": ("train.amp",), "batch": ("train.batch",), "imgsz": ("data.imgsz",),
             "model": ("model", "model.cfg")}


def previous_row(run_dir: Path, overrides: list[str]) -> dict[str, Any] | None:
    """The row an earlier run of this sweep wrote for this job dir; refuses a dir that held another point."""
    path = run_dir / ROW_FILE
    if not path.exists():
        return None
    row = json.loads(path.read_text())
    if row.get("overrides", "") != " ".join(overrides):
        raise ValueError(
            f"Sweep job dir {run_dir} holds another point ({row.get('overrides') or 'no overrides'}), not this job's "
            f"({' '.join(overrides) or 'no overrides'}). A re-run continues a sweep only with the same command line: "
            f"run the original sweep again with hydra.sweep.dir={run_dir.parent}, or start this one in a new sweep "
            f"dir (drop hydra.sweep.dir=...); nothing was changed."
        )
    return row


def restrict_ladder(allow: list[str], swept: list[str]) -> tuple[list[str], str]:
    """The ladder without rungs that would change a swept key, and a note naming what was dropped."""
    swept_set = {k.lstrip("+~") for k in swept}
    dropped = [r for r in allow if swept_set & set(RUNG_KEYS.get(r, ()))]
    if not dropped:
        return list(allow), ""
    keys = ", ".join(k for r in dropped for k in RUNG_KEYS[r] if k in swept_set)
    return [r for r in allow if r not in dropped], f"ladder without {'/'.join(dropped)} (swept: {keys})"


def prepare(cfg: Config, run_dir: Path, overrides: list[str], swept: list[str]) -> tuple[Config | None, dict]:
    """(config to run, record) for this point; config None: completed earlier, skip it."""
    row = previous_row(run_dir, overrides)
    if row and row.get("status") == "COMPLETED":
        # print: this job returns before its log file and handlers are set up
        print(f"sweep point {run_dir.name} [{' '.join(overrides)}] completed earlier: skipped, row kept", flush=True)
        return None, {}
    allow, note = restrict_ladder(list(cfg.train.allow_downgrade), swept)
    record: dict[str, Any] = {"ladder": note} if note else {}
    resume = cfg.train.resume
    if not resume and (run_dir / "last.pt").exists():
        resume = True
        record["resumed"] = str(run_dir / "last.pt")
        log.info(f"sweep point {run_dir.name}: resuming from {run_dir / 'last.pt'}")
    return replace(cfg, train=replace(cfg.train, allow_downgrade=allow, resume=resume)), record


def _plan(cfg: Config, nproc: int) -> dict[str, Any]:
    from launcher.plan_only import plan_job

    try:
        mem, _ = plan_job(cfg, nproc)
    except MemoryPlanError as e:
        if not e.need:  # a config error, not a verdict on memory
            raise
        return {"infeasible": True, "need_gib": round(e.need / GiB, 6), "have_gib": round(e.budget / GiB, 6),
                "message": str(e)}
    return {"need_gib": round(mem.need / GiB, 3), "have_gib": round(mem.budget / GiB, 3),
            "downgrades": list(mem.steps)}


def check_fits(cfg: Config, nproc: int) -> dict[str, Any]:
    """The planner's verdict for the point, as the job's ranks would reach it. On a GPU the probe runs in a
    spawned child, so this process holds no CUDA context (memory the workers then lack) while they train."""
    if not torch.cuda.is_available():
        return _plan(cfg, nproc)
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as pool:
        return pool.submit(_plan, cfg, nproc).result()


def write_point(run_dir: Path, record: dict[str, Any]) -> None:
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / POINT_FILE).write_text(json.dumps(record, indent=2))


def objective(run_dir: Path, names: list[str]) -> float | list[float]:
    """What an Optuna sweeper optimises, from the same files as the job's summary row: NaN where the point was
    infeasible or has no value (the sweeper records a failed trial, not a crash)."""
    row = job_row(0, "", [], "COMPLETED", run_dir)
    values = [float(row[n]) if row["status"] == "COMPLETED" and row.get(n) not in ("", None) else math.nan
              for n in names]
    return values[0] if len(values) == 1 else values
