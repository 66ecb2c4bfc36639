"""Rank roles decided once: rank 0 gets a `RunWriter`, every other rank a `NullWriter` with the same methods.

So the loop and `train()` never ask which rank they are. Collectives (loss means, per-rank stats, device
names) happen in the callers on every rank; the writer only receives their results.

RunWriter keys, shared by steps.csv / metrics.csv and W&B (W&B prefixes them train/, perf/, mem/, val/, epoch/:
yolo_ddp.logging.keys): per step `box_loss cls_loss dfl_loss lr amp_scale epoch`, `img_per_s` (sum over ranks),
`data_wait_ms` and `step_ms` (slowest rank), `peak_mem_gib` (largest rank), `plan_need_gib` (the memory planner's
need per rank), and `rank{r}_*` for each rank.
"""

from __future__ import annotations

import json
import logging
import sys
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from tqdm import tqdm

from yolo_ddp.logging import dashboard, files, keys
from yolo_ddp.logging.keys import PER_RANK, epoch_key, step_key
from yolo_ddp.logging.preview import ValPreview
from yolo_ddp.logging.wandb_run import WandbRun, wandb_importable

log = logging.getLogger("yolo_ddp")
# No monitor thread (suspected): a validation worker forked at the first validation once hung at birth on rank 0,
# the only rank with a progress bar and so with tqdm's monitor thread, which takes tqdm's lock every 10 s.
tqdm.monitor_interval = 0


class NullWriter:
    """What non-zero ranks get: the loop calls the same methods, nothing happens."""

    def progress(self, iterable: Iterable, total: int, desc: str) -> Iterable:
        return iterable

    def update_progress(self, bar: Any, values: dict[str, float]) -> None:
        pass

    def write_text(self, name: str, text: str) -> None:
        pass

    def info(self, message: str) -> None:
        pass

    def run_info(self, info: dict[str, Any]) -> None:
        pass

    def watch_validation(self, preview: ValPreview) -> None:
        pass

    def step_row(self, step: int, values: dict[str, float], per_rank: list[dict[str, float]] | None) -> None:
        pass

    def epoch_row(self, row: dict[str, Any], per_class_ap: dict[str, float] | None = None, model: Any = None) -> None:
        pass

    def close(self) -> None:
        pass


class RunWriter(NullWriter):
    METRICS_FILE = "metrics.csv"
    STEPS_FILE = "steps.csv"
    RESULTS_PLOT = "results.png"

    def __init__(self, run_dir: Path, wandb_run: WandbRun | None = None, plots: bool = True, logger: Any = None):
        self.run_dir = run_dir
        self.logger = logger  # the LoggerConfig: logger.dashboard publishes the W&B view at close()
        self.plots = plots  # logger.plots (`yolo train plots`): results.png and W&B validation images
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.wandb = wandb_run
        self.preview: ValPreview | None = None
        self.step = 0
        self.plan_need_gib: float | None = None

    def progress(self, iterable: Iterable, total: int, desc: str) -> Iterator:
        return tqdm(iterable, total=total, desc=desc, file=sys.stdout, dynamic_ncols=True, leave=True,
                    mininterval=1.0, disable=None)

    def update_progress(self, bar: Any, values: dict[str, float]) -> None:
        if hasattr(bar, "set_postfix"):
            bar.set_postfix({k: (f"{v:.4g}" if isinstance(v, float) else v) for k, v in values.items()},
                            refresh=False)

    def write_text(self, name: str, text: str) -> None:
        (self.run_dir / name).write_text(text)

    def info(self, message: str) -> None:
        log.info(message)

    def run_info(self, info: dict[str, Any]) -> None:
        self.write_text("run_info.json", json.dumps(info, indent=2, default=str))
        self.plan_need_gib = (info.get("memory_plan") or {}).get("need_GiB")
        if self.wandb:
            self.wandb.run_info(info)

    def watch_validation(self, preview: ValPreview) -> None:
        self.preview = preview

    def step_row(self, step: int, values: dict[str, float], per_rank: list[dict[str, float]] | None) -> None:
        ranks = per_rank or []
        row = {"step": step, **values}
        if ranks:
            row.update(img_per_s=sum(r["img_per_s"] for r in ranks),
                       data_wait_ms=max(r["data_wait_ms"] for r in ranks),
                       step_ms=max(r["step_ms"] for r in ranks), peak_mem_gib=max(r["peak_mem_gib"] for r in ranks))
        if self.plan_need_gib is not None:
            row[keys.PLAN_NEED] = self.plan_need_gib
        for r, stats in enumerate(ranks):
            row.update({f"rank{r}_{k}": stats[k] for k in PER_RANK})
        files.append_row(self.run_dir / self.STEPS_FILE, row)
        self.step = step
        if self.wandb:
            self.wandb.log(step, {step_key(k): v for k, v in row.items() if k != "step"})

    def epoch_row(self, row: dict[str, Any], per_class_ap: dict[str, float] | None = None, model: Any = None) -> None:
        """One row per epoch in metrics.csv and results.png; mAP, per-class AP and val images to W&B."""
        files.append_row(self.run_dir / self.METRICS_FILE, row)
        if self.plots:
            files.plot_results(self.run_dir / self.METRICS_FILE, self.run_dir / self.RESULTS_PLOT)
        if not self.wandb:
            return
        self.step = int(row.get("step", self.step))
        values = {epoch_key(k): v for k, v in row.items() if v != "" and k != "step"}
        if per_class_ap is not None:
            values[keys.PER_CLASS_AP] = self.wandb.table(["class", "AP50-95"], [[c, ap] for c, ap in per_class_ap.items()])
            if self.plots and self.preview is not None and model is not None and self.preview.n:
                values[keys.PREDICTIONS] = [self.wandb.image(px, boxes, f"val image {i}")
                                             for i, (px, boxes) in enumerate(self.preview.predict(model))]
        self.wandb.log(self.step, values)

    def close(self) -> None:
        if self.wandb:
            self._summarise()
            self.wandb.finish()
        if getattr(self.logger, "dashboard", False):
            self._publish_dashboard()

    def _publish_dashboard(self) -> None:
        """The project's saved view, or dashboard.json in the run dir without a key; a failure only warns."""
        entity, project = (self.wandb.entity, self.wandb.project) if self.wandb else (self.logger.entity,
                                                                                       self.logger.project)
        spec = dashboard.view_spec(entity, project, self.logger.sweep_keys or dashboard.DEFAULT_AXES)
        online, why = dashboard.connection(self.logger)
        try:
            log.info(dashboard.publish(spec, self.run_dir, online, why))
        except dashboard.DashboardError as e:
            log.warning(str(e))
            log.info(dashboard.publish(spec, self.run_dir, False, "saving to W&B failed"))

    def _summarise(self) -> None:
        rows = files.read_rows(self.run_dir / self.METRICS_FILE)
        _, maps = files.floats(rows, "mAP50-95")
        _, speed = files.floats(rows, "img_per_s")
        _, mem = files.floats(rows, "peak_mem_gib")
        self.wandb.summary({k: v for k, v in {keys.BEST_MAP: max(maps, default=None),
                                              keys.BEST_IMG_PER_S: max(speed, default=None),
                                              keys.PEAK_MEM: max(mem, default=None)}.items() if v is not None})


def make_writer(rank: int, run_dir: Path, logger: Any = None, config: dict[str, Any] | None = None) -> NullWriter:
    """`logger` is the LoggerConfig; `config` the resolved run config, which becomes the W&B run config.

    Only rank 0 may open the W&B run: a run per rank would split one job into world-size runs.
    """
    if rank != 0:
        return NullWriter()
    name = getattr(logger, "name", "none")
    if name == "wandb" and not wandb_importable():
        raise ValueError("Config key 'logger': logger=wandb but the wandb package is not installed. "
                         "`pip install wandb`, or use logger=csv for the local files only.")
    if name == "auto":
        name = "wandb" if wandb_importable() else "csv"
    plots = bool(getattr(logger, "plots", True))
    if name != "wandb":
        return RunWriter(run_dir, plots=plots, logger=logger)
    config = config or {}
    default_name = f"{config.get('name', 'run')}-{run_dir.parent.name}-{run_dir.name}"
    return RunWriter(run_dir, WandbRun(run_dir, logger, config, default_name), plots=plots, logger=logger)
