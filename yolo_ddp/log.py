"""Every rank-0 side effect except checkpoints lives here.

Rank roles are decided once, at construction: rank 0 gets a `RunWriter` (progress bar, metrics.csv,
run files), every other rank a `NullWriter` with the same methods doing nothing, so the training
loop never asks which rank it is. Each rank also logs to its own `rank{N}.log` in the run dir;
only rank 0 prints INFO to the console, other ranks print warnings and errors prefixed with their rank.
"""

from __future__ import annotations

import csv
import logging
import sys
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from tqdm import tqdm

log = logging.getLogger("yolo_ddp")


def setup_rank_logging(run_dir: Path, rank: int) -> None:
    run_dir.mkdir(parents=True, exist_ok=True)
    root = logging.getLogger()
    for h in list(root.handlers):
        root.removeHandler(h)
    root.setLevel(logging.INFO)
    file_handler = logging.FileHandler(run_dir / f"rank{rank}.log")
    file_handler.setFormatter(logging.Formatter("[%(asctime)s][%(name)s][%(levelname)s] %(message)s"))
    console = logging.StreamHandler(sys.stdout if rank == 0 else sys.stderr)
    console.setFormatter(logging.Formatter("%(message)s" if rank == 0 else f"[rank{rank}] %(levelname)s %(message)s"))
    console.setLevel(logging.INFO if rank == 0 else logging.WARNING)
    root.addHandler(file_handler)
    root.addHandler(console)
    # Ultralytics' own logger prints on every rank; keep its warnings only.
    logging.getLogger("ultralytics").setLevel(logging.WARNING)


class NullWriter:
    """What non-zero ranks get: the loop calls the same methods, nothing happens."""

    def progress(self, iterable: Iterable, total: int, desc: str) -> Iterable:
        return iterable

    def update_progress(self, bar: Any, values: dict[str, float]) -> None:
        pass

    def write_text(self, name: str, text: str) -> None:
        pass

    def epoch_row(self, row: dict[str, Any]) -> None:
        pass

    def info(self, message: str) -> None:
        pass

    def close(self) -> None:
        pass


class RunWriter(NullWriter):
    METRICS_FILE = "metrics.csv"

    def __init__(self, run_dir: Path):
        self.run_dir = run_dir
        self.run_dir.mkdir(parents=True, exist_ok=True)

    def progress(self, iterable: Iterable, total: int, desc: str) -> Iterator:
        return tqdm(iterable, total=total, desc=desc, file=sys.stdout, dynamic_ncols=True, leave=True,
                    mininterval=1.0, disable=None)

    def update_progress(self, bar: Any, values: dict[str, float]) -> None:
        if hasattr(bar, "set_postfix"):
            bar.set_postfix({k: (f"{v:.4g}" if isinstance(v, float) else v) for k, v in values.items()},
                            refresh=False)

    def write_text(self, name: str, text: str) -> None:
        (self.run_dir / name).write_text(text)

    def epoch_row(self, row: dict[str, Any]) -> None:
        """Append one row per epoch; the header is written with the first row (resume appends)."""
        path = self.run_dir / self.METRICS_FILE
        new = not path.exists() or path.stat().st_size == 0
        with path.open("a", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=list(row))
            if new:
                writer.writeheader()
            writer.writerow({k: (round(v, 6) if isinstance(v, float) else v) for k, v in row.items()})

    def info(self, message: str) -> None:
        log.info(message)


def make_writer(rank: int, run_dir: Path) -> NullWriter:
    return RunWriter(run_dir) if rank == 0 else NullWriter()
