"""Local reports, written whatever the logger: metrics.csv, steps.csv and results.png in the run dir."""

from __future__ import annotations

import csv
from collections.abc import Sequence
from pathlib import Path
from typing import Any

LOSS_COLUMNS = ("box_loss", "cls_loss", "dfl_loss")
MAP_COLUMNS = ("mAP50", "mAP50-95")


def append_row(path: Path, row: dict[str, Any]) -> None:
    """Append one row; the header comes with the first row, and a resumed run keeps the file's header."""
    header = read_header(path)
    with path.open("a", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=header or list(row), extrasaction="ignore")
        if not header:
            writer.writeheader()
        writer.writerow({k: (round(v, 6) if isinstance(v, float) else v) for k, v in row.items()})


def read_header(path: Path) -> list[str]:
    if not path.exists() or path.stat().st_size == 0:
        return []
    with path.open(newline="") as f:
        return next(csv.reader(f), [])


def read_rows(path: Path) -> list[dict[str, str]]:
    if not path.exists():
        return []
    with path.open(newline="") as f:
        return list(csv.DictReader(f))


def floats(rows: Sequence[dict[str, str]], key: str) -> tuple[list[float], list[float]]:
    """(epochs, values) of the rows where `key` has a value (validation runs every train.val_every epochs)."""
    xs, ys = [], []
    for row in rows:
        value = row.get(key, "")
        if value not in ("", None):
            xs.append(float(row["epoch"]))
            ys.append(float(value))
    return xs, ys


def plot_results(metrics_csv: Path, out: Path) -> None:
    """Loss and mAP curves per epoch, as Ultralytics' results.png shows them."""
    import matplotlib

    matplotlib.use("Agg")  # no display on training nodes
    import matplotlib.pyplot as plt

    rows = read_rows(metrics_csv)
    fig, (ax_loss, ax_map, ax_lr) = plt.subplots(1, 3, figsize=(15, 4), tight_layout=True)
    for key in LOSS_COLUMNS:
        ax_loss.plot(*floats(rows, key), marker=".", label=key)
    for key in MAP_COLUMNS:
        ax_map.plot(*floats(rows, key), marker="o", label=key)
    ax_lr.plot(*floats(rows, "lr"), marker=".", label="lr")
    for ax, title in ((ax_loss, "train loss (mean over ranks)"), (ax_map, "validation mAP (EMA weights)"),
                      (ax_lr, "learning rate")):
        ax.set_title(title)
        ax.set_xlabel("epoch")
        ax.grid(alpha=0.3)
        ax.legend()
    fig.savefig(out, dpi=100)
    plt.close(fig)
