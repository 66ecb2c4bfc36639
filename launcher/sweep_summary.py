"""Hydra callback: after each multirun job, rewrite sweep_summary.csv/.png in the sweep dir.

A callback rather than code after the sweep: Hydra calls `on_job_end` for failed jobs too, while a failed
job stops the basic sweeper before `on_multirun_end`. Registered in conf/config.yaml (hydra.callbacks).
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from hydra.core.utils import JobReturn, JobStatus
from hydra.experimental.callback import Callback
from hydra.types import RunMode
from omegaconf import DictConfig

from launcher.job_names import name_from_overrides, sweep_argv, swept_keys
from launcher.slurm import node_rank
from yolo_ddp.logging.sweep import job_row, write_summary

log = logging.getLogger("launcher")


ROW_FILE = "sweep_row.json"


class SweepSummary(Callback):
    """Rows live in each job's dir, not in this object: under submitit every job runs in its own process (on
    its own node under SLURM) with its own copy of the callback, so the summary is rebuilt from disk."""

    def on_job_end(self, config: DictConfig, job_return: JobReturn, **kwargs: Any) -> None:
        hydra = config.hydra
        if hydra.mode != RunMode.MULTIRUN or node_rank() != 0:  # a single run or torchrun rank; a job's other nodes
            return
        overrides = list(job_return.overrides or [])
        failed = job_return.status != JobStatus.COMPLETED
        # JobReturn.return_value re-raises a failed job's exception; the stored value is the exception itself.
        error = str(getattr(job_return, "_return_value", "")) if failed else ""
        job = int(hydra.job.num)
        run_dir = Path(hydra.runtime.output_dir)
        row = job_row(job, name_from_overrides(overrides, swept_keys(sweep_argv())), overrides,
                      job_return.status.name, run_dir, error)
        run_dir.mkdir(parents=True, exist_ok=True)
        (run_dir / ROW_FILE).write_text(json.dumps(row))
        self._write(Path(hydra.sweep.dir))

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        # Jobs that ended at the same moment in other processes may each have missed the other's row.
        self._write(Path(config.hydra.sweep.dir))

    @staticmethod
    def _write(sweep_dir: Path) -> None:
        rows = [json.loads(p.read_text()) for p in sweep_dir.rglob(ROW_FILE)]
        if rows:
            write_summary(sweep_dir, rows)
            log.info(f"sweep summary ({len(rows)} job(s)): {sweep_dir / 'sweep_summary.csv'}")
