"""Registers the typed schema in Hydra's ConfigStore: typos and wrong types fail at compose time."""

from __future__ import annotations

from hydra.core.config_store import ConfigStore

from yolo_ddp.config import Config


def register_configs() -> None:
    ConfigStore.instance().store(name="base_config", node=Config)
