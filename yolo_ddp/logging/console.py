"""Per-rank console and log files: rank 0 prints INFO, other ranks only warnings and errors, prefixed with their rank.

Each rank also logs everything to its own `rank{N}.log` in the run dir.
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path


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
    disable_ultralytics_wandb()


def disable_ultralytics_wandb() -> None:
    """The launcher owns the W&B run: Ultralytics' own callback must never open a second one.

    Its settings enable the callback for any Ultralytics trainer created in this process when `wandb` is True
    (the default in older releases). Set it off for this process only: `dict.__setitem__` skips
    SettingsManager's save, so the user's settings.json is never rewritten.
    """
    from ultralytics.utils import SETTINGS

    dict.__setitem__(SETTINGS, "wandb", False)
