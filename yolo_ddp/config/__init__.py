"""Typed run configuration: one dataclass per concern.

These are plain dataclasses so the library never needs Hydra; `launcher/store.py` registers them in
Hydra's ConfigStore, which makes a typo'd key or a wrong type fail at compose time. `__post_init__`
checks what a type cannot (ranges, choices) and raises `ValueError` naming the key and the fix.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from yolo_ddp.config.data import DATA_BACKENDS, SYNTHETIC_DATA, DaliConfig, DataConfig, SyntheticDataConfig
from yolo_ddp.config.run import (
    AUTO_CPU_RANKS,
    LOGGERS,
    SYNC_STRATEGIES,
    WANDB_MODES,
    DistConfig,
    LauncherConfig,
    LoggerConfig,
    SyncConfig,
)
from yolo_ddp.config.train import AMP_MODES, LOSS_NORMS, OPTIMIZERS, ModelConfig, TrainConfig

__all__ = ["AMP_MODES", "AUTO_CPU_RANKS", "DATA_BACKENDS", "LOGGERS", "LOSS_NORMS", "OPTIMIZERS", "SYNC_STRATEGIES",
           "SYNTHETIC_DATA", "WANDB_MODES", "Config", "DaliConfig", "DataConfig", "DistConfig", "LauncherConfig",
           "LoggerConfig", "ModelConfig", "SyncConfig", "SyntheticDataConfig", "TrainConfig"]


@dataclass
class Config:
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    launcher: LauncherConfig = field(default_factory=LauncherConfig)
    logger: LoggerConfig = field(default_factory=LoggerConfig)
    dist: DistConfig = field(default_factory=DistConfig)
    sync: SyncConfig = field(default_factory=SyncConfig)
    name: str = "run"
    run_dir: str = "."  # set by the launcher to the job's Hydra output dir
    plan: bool = False  # print the memory/run plan and exit without training
