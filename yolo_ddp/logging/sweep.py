"""A sweep's summary: one row per job, from the files its run dir holds (whatever the job got to write).

Written by the Hydra callback `launcher.sweep_summary.SweepSummary` after every job, so a failed job is a
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
COLUMNS = ("job", "name", "overrides", "status", "world_size", "batch_per_rank", "accumulate", "imgsz",
           "img_per_s", "peak_mem_gib", "best_mAP50-95", "epochs", "run_dir", "error")


def job_row(job: int, name: str, overrides: list[str], status: str, run_dir: Path, error: str = "") -> dict[str, Any]:
    plan_file = run_dir / "plan.json"
    plan = json.loads(plan_file.read_text()) if plan_file.exists() else {}
    rows = files.read_rows(run_dir / "metrics.csv")
    _, maps = files.floats(rows, "mAP50-95")
    _, speed = files.floats(rows, "img_per_s")
    _, mem = files.floats(rows, "peak_mem_gib")
    return {
        "job": job, "name": name, "overrides": " ".join(overrides), "status": status,
        "world_size": plan.get("world_size", ""), "batch_per_rank": plan.get("batch_per_rank", ""),
        "accumulate": plan.get("accumulate", ""), "imgsz": plan.get("imgsz", ""),
        # The last epoch's throughput: the first one carries warm-up (allocator, cudnn autotune, loader start).
        "img_per_s": round(speed[-1], 2) if speed else "", "peak_mem_gib": round(max(mem), 3) if mem else "",
        "best_mAP50-95": round(max(maps), 5) if maps else "", "epochs": len(rows), "run_dir": str(run_dir),
        "error": _short_error(error),
    }


def _short_error(error: str) -> str:
    """One line; without the launcher's `job #N [overrides]: ` prefix, which the row already has."""
    return re.sub(r"^job #\d+ \[[^\]]*\]: ", "", " ".join(error.split()))[:400]


def write_summary(sweep_dir: Path, rows: list[dict[str, Any]]) -> None:
    sweep_dir.mkdir(parents=True, exist_ok=True)
    with (sweep_dir / SUMMARY_CSV).open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=COLUMNS)
        writer.writeheader()
        writer.writerows(sorted(rows, key=lambda r: r["job"]))
    plot_summary(sorted(rows, key=lambda r: r["job"]), sweep_dir / SUMMARY_PNG)


def plot_summary(rows: list[dict[str, Any]], out: Path) -> None:
    """Throughput, best mAP50-95 and peak memory per job, side by side; failed jobs are marked on the axis."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = [f"#{r['job']} {r['name']}" + ("" if r["status"] == "COMPLETED" else f"\n({r['status']})") for r in rows]
    fig, axes = plt.subplots(1, 3, figsize=(max(12, 2.2 * len(rows) * 3 / 2), 4.5), tight_layout=True)
    for ax, key, title in zip(axes, ("img_per_s", "best_mAP50-95", "peak_mem_gib"),
                              ("img/s (all ranks, last epoch)", "best mAP50-95", "peak memory per rank (GiB)"),
                              strict=True):
        values = [float(r[key]) if r[key] != "" else 0.0 for r in rows]
        colors = ["tab:blue" if r["status"] == "COMPLETED" else "tab:red" for r in rows]
        ax.bar(range(len(rows)), values, color=colors)
        ax.set_xticks(range(len(rows)), labels, rotation=30, ha="right", fontsize=8)
        ax.set_title(title)
        ax.grid(axis="y", alpha=0.3)
    fig.savefig(out, dpi=100)
    plt.close(fig)
