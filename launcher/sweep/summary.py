"""Hydra callback: after each multirun job, rewrite sweep_summary.csv/.png in the sweep dir; at the end of the
sweep, with logger.dashboard=true, the W&B view and the sweep's report (or dashboard.json without a key).

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
from omegaconf import DictConfig, OmegaConf

from launcher.job.names import name_from_overrides, sweep_group_name, sweep_keys
from launcher.job.slurm import node_rank
from yolo_ddp.logging import dashboard
from yolo_ddp.logging.sweep import ROW_FILE, SUMMARY_CSV, SUMMARY_PNG, best_row, job_row, write_summary

log = logging.getLogger("launcher")


def objectives_of(hydra: DictConfig) -> tuple[list[str], bool]:
    """(objective columns, whether this is a search): an Optuna sweeper's `objectives`, else best mAP50-95."""
    sweeper = hydra.get("sweeper") or {}
    names = list(sweeper.get("objectives") or ["best_mAP50-95"])
    return names, "optuna" in str(sweeper.get("_target_", ""))


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
        old = run_dir / ROW_FILE
        if not failed and old.exists():  # a point a re-run skipped keeps the row of the run that completed it
            kept = json.loads(old.read_text())
            if kept.get("status") == "COMPLETED" and kept.get("overrides") == " ".join(overrides):
                self._write(config)
                return
        swept = sweep_keys(hydra)
        names, _ = objectives_of(hydra)
        row = job_row(job, name_from_overrides(overrides, swept), overrides, job_return.status.name, run_dir, error,
                      swept, names)
        run_dir.mkdir(parents=True, exist_ok=True)
        old.write_text(json.dumps(row))
        self._write(config)

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        # Jobs that ended at the same moment in other processes may each have missed the other's row.
        rows = self._write(config)
        if config.logger.get("dashboard") and node_rank() == 0:
            publish_sweep_dashboard(config, Path(config.hydra.sweep.dir), rows)

    @staticmethod
    def _write(config: DictConfig) -> list[dict[str, Any]]:
        sweep_dir = Path(config.hydra.sweep.dir)
        rows = [json.loads(p.read_text()) for p in sweep_dir.rglob(ROW_FILE)]
        if rows:
            names, search = objectives_of(config.hydra)
            write_summary(sweep_dir, rows, names, search)
            log.info(f"sweep summary ({len(rows)} job(s)): {sweep_dir / SUMMARY_CSV}")
        return sorted(rows, key=lambda r: r["job"])


def _jobs_group(rows: list[dict[str, Any]]) -> str:
    """The W&B group the jobs logged under (logger.group may name one), else the sweep id."""
    for row in rows:
        resolved = Path(row["run_dir"]) / "resolved_config.yaml"
        if resolved.exists():
            group = (OmegaConf.load(resolved).get("logger") or {}).get("group")
            if group:
                return str(group)
    return sweep_group_name()


def publish_sweep_dashboard(config: DictConfig, sweep_dir: Path, rows: list[dict[str, Any]]) -> None:
    """The view with this sweep's keys as axes, and a report of the sweep; a failure only warns."""
    logger = config.logger
    group = _jobs_group(rows)
    spec = dashboard.view_spec(logger.entity, logger.project, sweep_keys(config.hydra))
    spec["report"] = dashboard.sweep_report_spec(sweep_dir, group, rows, best_row(rows), sweep_dir / SUMMARY_CSV,
                                                 sweep_dir / SUMMARY_PNG)
    online, why = dashboard.connection(logger)
    try:
        line = dashboard.publish(spec, sweep_dir, online, why)
    except dashboard.DashboardError as e:
        log.warning(str(e))
        line = dashboard.publish(spec, sweep_dir, False, "saving to W&B failed")
    log.info(line)
