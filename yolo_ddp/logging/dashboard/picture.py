"""A picture of the saved view, drawn locally: each panel of a dashboard spec plotted from the run dirs' own files.

The same keys W&B would show, from what the runs wrote: steps.csv and metrics.csv under their W&B names
(yolo_ddp.logging.keys), the summary the writer computes from them, the run config from resolved_config.yaml,
and the per-class AP table from the offline W&B run's files where there is one. For a machine that cannot reach
W&B, and for the README's picture (`python -m launcher.dashboard --picture RUNS_DIR`).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from yolo_ddp.logging import files, keys

PICTURE_FILE = "dashboard.png"


@dataclass
class LocalRun:
    name: str
    history: dict[str, tuple[list[float], list[float]]] = field(default_factory=dict)  # key -> (steps, values)
    epochs: dict[str, tuple[list[float], list[float]]] = field(default_factory=dict)  # key -> (epochs, values)
    summary: dict[str, float] = field(default_factory=dict)
    config: dict[str, Any] = field(default_factory=dict)  # flattened: train.batch
    per_class_ap: dict[str, float] = field(default_factory=dict)


def _flatten(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        out.update(_flatten(v, f"{prefix}{k}.") if isinstance(v, dict) else {f"{prefix}{k}": v})
    return out


def _series(rows: list[dict[str, str]], x: str, column: str) -> tuple[list[float], list[float]]:
    pairs = [(float(r[x]), float(r[column])) for r in rows if r.get(column, "") not in ("", None)]
    return [p[0] for p in pairs], [p[1] for p in pairs]


def _per_class_ap(run_dir: Path) -> dict[str, float]:
    """The last val/per_class_ap table an offline W&B run of this dir logged (file names carry the step)."""
    def step(p: Path) -> int:
        found = re.search(r"per_class_ap_(\d+)_", p.name)
        return int(found.group(1)) if found else -1

    tables = sorted(run_dir.glob("wandb/*/files/media/table/val/per_class_ap_*.table.json"), key=step)
    if not tables:
        return {}
    table = json.loads(tables[-1].read_text())
    return {str(c): float(ap) for c, ap in table["data"]}


def load_run(run_dir: Path) -> LocalRun:
    config_file = next((p for p in (run_dir / "resolved_config.yaml", run_dir / ".hydra" / "config.yaml") if p.exists()),
                       None)
    config = _flatten(yaml.safe_load(config_file.read_text()) or {}) if config_file else {}
    run = LocalRun(name=str(config.get("logger.run_name") or run_dir.name), config=config,
                   per_class_ap=_per_class_ap(run_dir))
    steps = files.read_rows(run_dir / "steps.csv")
    for column in files.read_header(run_dir / "steps.csv"):
        if column != "step":
            run.history[keys.step_key(column)] = _series(steps, "step", column)
    metrics = files.read_rows(run_dir / "metrics.csv")
    for column in files.read_header(run_dir / "metrics.csv"):
        if column not in ("step", "epoch"):
            run.history[keys.epoch_key(column)] = _series(metrics, "step", column)
            run.epochs[keys.epoch_key(column)] = _series(metrics, "epoch", column)
    for key, column in ((keys.BEST_MAP, "mAP50-95"), (keys.BEST_IMG_PER_S, "img_per_s"), (keys.PEAK_MEM, "peak_mem_gib")):
        values = _series(metrics, "epoch", column)[1]
        if values:
            run.summary[key] = max(values)
    return run


def find_runs(root: Path) -> list[Path]:
    """Run dirs under `root` (a run dir, a sweep dir, outputs/): every dir with a metrics.csv."""
    return sorted({p.parent for p in root.rglob("metrics.csv")})


def _value(run: LocalRun, ref: dict[str, str]) -> Any:
    return run.config.get(ref["config"]) if "config" in ref else run.summary.get(ref["summary"])


def _line(ax: Any, panel: dict[str, Any], runs: list[LocalRun], colors: list[Any]) -> None:
    """Colour = run (the figure's legend), line style = series (this panel's legend, when it has several)."""
    styles = ["-", "--", ":", "-."]
    source_of = (lambda r: r.epochs) if panel["x"] == "epoch" else (lambda r: r.history)
    names = sorted({k for r in runs for k in source_of(r) if re.fullmatch(panel["regex"], k)}) if panel["regex"] \
        else panel["y"]
    for run, color in zip(runs, colors, strict=True):
        for i, key in enumerate(names):
            series = source_of(run).get(key)
            if series and series[0]:
                ax.plot(*series, styles[i % len(styles)], color=color, marker=".", ms=3, lw=1)
    if len(names) > 1:
        for i, key in enumerate(names):
            ax.plot([], [], styles[i % len(styles)], color="0.3", label=key)
        ax.legend(fontsize=5, loc="best")
    ax.set_xlabel(panel["x"], fontsize=7)


def _table(ax: Any, runs: list[LocalRun], colors: list[Any]) -> None:
    classes = sorted({c for r in runs for c in r.per_class_ap})
    width = 0.8 / max(len(runs), 1)
    for i, (run, color) in enumerate(zip(runs, colors, strict=True)):
        ax.barh([j + i * width for j in range(len(classes))], [run.per_class_ap.get(c, 0.0) for c in classes],
                height=width, color=color)
    ax.set_yticks([j + 0.4 - width / 2 for j in range(len(classes))], classes, fontsize=6)
    ax.set_xlabel("AP50-95", fontsize=7)
    if not classes:
        ax.text(0.5, 0.5, "no per-class AP table in these runs' W&B files", ha="center", fontsize=7,
                transform=ax.transAxes)


def _parallel(ax: Any, panel: dict[str, Any], runs: list[LocalRun], colors: list[Any]) -> None:
    """One vertical axis per column, each scaled to its own range (categories evenly spaced), as W&B draws it."""
    columns = panel["columns"]
    scaled: list[list[float]] = [[] for _ in runs]
    for j, ref in enumerate(columns):
        values = [_value(r, ref) for r in runs]
        present = [v for v in values if v is not None]
        numeric = all(isinstance(v, int | float) for v in present)
        if numeric and present:
            lo, hi = min(present), max(present)
            ticks = {lo: 0.0, hi: 1.0}
            position = {v: (v - lo) / ((hi - lo) or 1) for v in present}
        else:
            order = sorted({str(v) for v in present})
            position = {v: i / max(len(order) - 1, 1) for i, v in enumerate(order)}
            ticks = dict(position)
            position = {v: position[str(v)] for v in present}
        for i, v in enumerate(values):
            scaled[i].append(float("nan") if v is None else position[v])
        for value, y in ticks.items():
            ax.text(j + 0.04, y, f"{value:.4g}" if isinstance(value, float) else str(value), fontsize=6, va="center")
        ax.text(j, 1.07, ref.get("config") or ref.get("summary"), ha="center", fontsize=6)
    for row, color in zip(scaled, colors, strict=True):
        ax.plot(range(len(columns)), row, "-o", color=color, ms=3)
    for j in range(len(columns)):
        ax.axvline(j, color="0.6", lw=0.8)
    ax.set_xticks([])
    ax.set_yticks([])
    ax.set_xlim(-0.1, len(columns) - 0.6)
    ax.set_ylim(-0.05, 1.14)


def _scatter(ax: Any, panel: dict[str, Any], runs: list[LocalRun], colors: list[Any]) -> None:
    for run, color in zip(runs, colors, strict=True):
        x, y = _value(run, panel["x"]), _value(run, panel["y"])
        if x is not None and y is not None:
            ax.scatter([x], [y], color=color)
    ax.set_xlabel(panel["x"]["summary"], fontsize=7)
    ax.set_ylabel(panel["y"]["summary"], fontsize=7)


def draw(spec: dict[str, Any], run_dirs: list[Path], out: Path) -> Path:
    """One row per section, one plot per panel, every run in its own colour (as the view colours runs)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.lines import Line2D

    runs = [load_run(d) for d in run_dirs]
    colors = [plt.get_cmap("tab10")(i % 10) for i in range(len(runs))]
    width = max(len(s["panels"]) for s in spec["sections"])
    fig = plt.figure(figsize=(3.4 * width, 3.0 * len(spec["sections"])), layout="constrained")
    where = f"{spec['entity'] or '<entity>'}/{spec['project']}"
    fig.suptitle(f"W&B view '{spec['view']}' in {where}, drawn from {len(runs)} local run(s)", fontsize=11)
    for subfig, section in zip(fig.subfigures(len(spec["sections"]), 1), spec["sections"], strict=True):
        subfig.suptitle(section["name"], fontsize=10, fontweight="bold", x=0.01, ha="left")
        axes = subfig.subplots(1, width, squeeze=False)[0]
        for ax, panel in zip(axes, section["panels"], strict=False):
            {"line": lambda a, p: _line(a, p, runs, colors), "table": lambda a, p: _table(a, runs, colors),
             "parallel": lambda a, p: _parallel(a, p, runs, colors),
             "scatter": lambda a, p: _scatter(a, p, runs, colors)}[panel["kind"]](ax, panel)
            ax.set_title(panel["title"], fontsize=8)
            ax.tick_params(labelsize=6)
            ax.grid(alpha=0.3)
        for ax in axes[len(section["panels"]):]:
            ax.axis("off")
    fig.legend(handles=[Line2D([], [], color=c, marker="o", label=r.name) for r, c in zip(runs, colors, strict=True)],
               loc="upper right", fontsize=8, title="runs", title_fontsize=8)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=90)
    plt.close(fig)
    return out
