"""Every rank-0 side effect except checkpoints: console, local reports (CSV, plots), the W&B run.

Imports inside this package are absolute, so `import logging` here is still the standard library.
"""

from __future__ import annotations

from yolo_ddp.logging.console import disable_ultralytics_wandb, setup_rank_logging
from yolo_ddp.logging.preview import ValPreview
from yolo_ddp.logging.run_info import collect_run_info
from yolo_ddp.logging.step_stats import StepWindow, peak_memory_gib
from yolo_ddp.logging.writer import NullWriter, RunWriter, make_writer

__all__ = ["NullWriter", "RunWriter", "StepWindow", "ValPreview", "collect_run_info", "disable_ultralytics_wandb",
           "make_writer", "peak_memory_gib", "setup_rank_logging"]
