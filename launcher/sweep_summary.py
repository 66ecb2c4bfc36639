"""Hydra callback: after each multirun job, rewrite sweep_summary.csv/.png in the sweep dir.

A callback rather than code after the sweep: Hydra calls `on_job_end` for failed jobs too, while a failed
job stops the basic sweeper before `on_multirun_end`. Registered in conf/config.yaml (hydra.callbacks).
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path
from typing import Any

from hydra.core.utils import JobReturn, JobStatus
from hydra.experimental.callback import Callback
from hydra.types import RunMode
from omegaconf import DictConfig

from launcher.job_names import name_from_overrides, swept_keys
from yolo_ddp.logging.sweep import job_row, write_summary

log = logging.getLogger("launcher")


class SweepSummary(Callback):
    def __init__(self) -> None:
        self.rows: dict[int, dict[str, Any]] = {}

    def on_job_end(self, config: DictConfig, job_return: JobReturn, **kwargs: Any) -> None:
        hydra = config.hydra
        if hydra.mode != RunMode.MULTIRUN:  # a single run (also every torchrun rank)
            return
        overrides = list(job_return.overrides or [])
        failed = job_return.status != JobStatus.COMPLETED
        # JobReturn.return_value re-raises a failed job's exception; the stored value is the exception itself.
        error = str(getattr(job_return, "_return_value", "")) if failed else ""
        job = int(hydra.job.num)
        self.rows[job] = job_row(job, name_from_overrides(overrides, swept_keys(sys.argv[1:])), overrides,
                                 job_return.status.name, Path(hydra.runtime.output_dir), error)
        sweep_dir = Path(hydra.sweep.dir)
        write_summary(sweep_dir, list(self.rows.values()))
        log.info(f"sweep summary ({len(self.rows)} job(s)): {sweep_dir / 'sweep_summary.csv'}")
