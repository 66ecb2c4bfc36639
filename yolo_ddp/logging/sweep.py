"""A sweep's summary: one row per job, from the files its run dir holds (whatever the job got to write).

Written by the Hydra callback `launcher.sweep.summary.SweepSummary` after every job, so a failed job is a
row too (status FAILED, its error) and the files exist even when the sweep stops early.
"""

from __future__ import annotations

import csv
import json
import re
from pathlib import Path
from typing import Any

from yolo_ddp.logging import files

SUMMARY_CSV = "sweep_summary.csv"
SUMMARY_PNG = "sweep_summary.png"
BEST_TXT = "sweep_best.txt"
ROW_FILE = "sweep_row.json"  # one job's row, in its dir (the summary is rebuilt from these)
POINT_FILE = "sweep_point.json"  # what the launcher decided before the job's workers started (launcher/sweep/points.py)
INFEASIBLE = "INFEASIBLE"
OBJECTIVES = ("best_mAP50-95", "img_per_s")  # what a search may optimise: columns of a row
COLUMNS = ("job", "name", "params", "status", "objective", "world_size", "batch_per_rank", "accumulate", "imgsz",
           "img_per_s", "peak_mem_gib", "best_mAP50-95", "epochs", "need_gib", "have_gib", "downgrades", "resumed",
           "command", "overrides", "run_dir", "error")


def job_row(job: int, name: str, overrides: list[str], status: str, run_dir: Path, error: str = "",
            swept: list[str] = (), objectives: list[str] = ("best_mAP50-95",)) -> dict[str, Any]:
    plan_file, point_file = run_dir / "plan.json", run_dir / POINT_FILE
    plan = json.loads(plan_file.read_text()) if plan_file.exists() else {}
    point = json.loads(point_file.read_text()) if point_file.exists() else {}
    memory_file = run_dir / "memory_plan.json"  # what the ranks decided (the launcher's plan is a forecast)
    memory = json.loads(memory_file.read_text()) if memory_file.exists() else point
    rows = files.read_rows(run_dir / "metrics.csv")
    _, maps = files.floats(rows, "mAP50-95")
    _, speed = files.floats(rows, "img_per_s")
    _, mem = files.floats(rows, "peak_mem_gib")
    if point.get("infeasible") and status == "COMPLETED":
        status, error = INFEASIBLE, point.get("message", "")
    row = {
        "job": job, "name": name, "params": params_of(overrides, swept), "status": status,
        "world_size": plan.get("world_size", ""), "batch_per_rank": plan.get("batch_per_rank", ""),
        "accumulate": plan.get("accumulate", ""), "imgsz": plan.get("imgsz", ""),
        # The last epoch's throughput: the first one carries warm-up (allocator, cudnn autotune, loader start).
        "img_per_s": round(speed[-1], 2) if speed else "", "peak_mem_gib": round(max(mem), 3) if mem else "",
        "best_mAP50-95": round(max(maps), 5) if maps else "", "epochs": len(rows),
        "need_gib": memory.get("need_GiB", point.get("need_gib", "")),
        "have_gib": memory.get("budget_GiB", point.get("have_gib", "")),
        "downgrades": "; ".join(filter(None, [point.get("ladder", ""), *memory.get("downgrades", [])])),
        "resumed": point.get("resumed", ""),
        "command": " ".join(["python -m launcher", *overrides]), "overrides": " ".join(overrides),
        "run_dir": str(run_dir), "error": _short_error(error),
    }
    values = [row[o] for o in objectives]
    row["objective"] = ";".join(str(v) for v in values) if status == "COMPLETED" and "" not in values else ""
    return row


def params_of(overrides: list[str], swept: list[str]) -> str:
    """The swept keys' values of one job, `train.lr0=0.01 data.mosaic=0.5` (all overrides when none is known)."""
    keys = {k.lstrip("+~") for k in swept}
    chosen = [o for o in overrides if "=" in o and o.split("=", 1)[0].lstrip("+~") in keys]
    return " ".join(chosen or overrides)


def _short_error(error: str) -> str:
    """One line; without the launcher's `job #N [overrides]: ` prefix, which the row already has."""
    return re.sub(r"^job #\d+ \[[^\]]*\]: ", "", " ".join(error.split()))[:400]


def best_row(rows: list[dict[str, Any]]) -> dict[str, Any] | None:
    """The completed job with the highest (first) objective."""
    done = [r for r in rows if r["status"] == "COMPLETED" and r.get("objective", "") != ""]
    return max(done, key=lambda r: float(str(r["objective"]).split(";")[0])) if done else None


def write_summary(sweep_dir: Path, rows: list[dict[str, Any]], objectives: list[str] = ("best_mAP50-95",),
                  search: bool = False) -> None:
    """sweep_summary.csv/.png; with a best job, sweep_best.txt: its objective(s) and the command reproducing it."""
    sweep_dir.mkdir(parents=True, exist_ok=True)
    rows = sorted(rows, key=lambda r: r["job"])
    with (sweep_dir / SUMMARY_CSV).open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=COLUMNS, extrasaction="ignore", restval="")
        writer.writeheader()
        writer.writerows(rows)
    plot_summary(rows, sweep_dir / SUMMARY_PNG, objectives if search else ())
    best = best_row(rows)
    if best:
        (sweep_dir / BEST_TXT).write_text(
            f"best job #{best['job']} ({best['params']}): {'; '.join(objectives)} = {best['objective']}\n"
            f"{best['command']}\n")


def _label(r: dict[str, Any]) -> str:
    status = "" if r["status"] == "COMPLETED" else f"\n({r['status']}"
    if r["status"] == INFEASIBLE and r.get("need_gib", "") != "":
        status += f": needs {float(r['need_gib']):.3g} of {float(r['have_gib']):.3g} GiB"
    name = r["name"] if len(r["name"]) <= 40 else r["name"][:37] + "..."  # a search's full point is in the CSV
    return f"#{r['job']} {name}" + (status + ")" if status else "")


def plot_summary(rows: list[dict[str, Any]], out: Path, objectives: list[str] = ()) -> None:
    """Throughput, best mAP50-95 and peak memory per job, side by side; failed and infeasible jobs are marked
    on the axis. A search (`objectives` given) adds its first objective against the trial and the best so far."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = [_label(r) for r in rows]
    panels = 3 + bool(objectives)
    fig, axes = plt.subplots(1, panels, figsize=(max(4 * panels, 2.2 * len(rows) * panels / 2), 4.8),
                             tight_layout=True)
    colors = ["tab:blue" if r["status"] == "COMPLETED" else "tab:red" for r in rows]
    for ax, key, title in zip(axes, ("img_per_s", "best_mAP50-95", "peak_mem_gib"),
                              ("img/s (all ranks, last epoch)", "best mAP50-95", "peak memory per rank (GiB)"),
                              strict=False):
        values = [float(r[key]) if r[key] != "" else 0.0 for r in rows]
        ax.bar(range(len(rows)), values, color=colors)
        ax.set_xticks(range(len(rows)), labels, rotation=30, ha="right", fontsize=8)
        ax.set_title(title)
        ax.grid(axis="y", alpha=0.3)
    if objectives:
        _plot_objective(axes[3], rows, objectives[0])
    fig.savefig(out, dpi=100)
    plt.close(fig)


def _plot_objective(ax: Any, rows: list[dict[str, Any]], name: str) -> None:
    trials = [int(r["job"]) for r in rows]
    values = [float(str(r["objective"]).split(";")[0]) if r.get("objective", "") != "" else None for r in rows]
    done = [(t, v) for t, v in zip(trials, values, strict=True) if v is not None]
    if done:
        ax.plot(*zip(*done, strict=True), "o", color="tab:blue", label="trial")
        best = [max(v for t2, v in done if t2 <= t) for t, _ in done]
        ax.step([t for t, _ in done], best, where="post", color="tab:green", label="best so far")
    failed = [t for t, v in zip(trials, values, strict=True) if v is None]
    if failed:
        ax.plot(failed, [0.0] * len(failed), "x", color="tab:red", label="failed / infeasible")
    ax.set_xlabel("trial")
    ax.set_title(f"objective: {name} vs trial")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
