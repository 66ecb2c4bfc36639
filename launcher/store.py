"""Registers the typed schema in Hydra's ConfigStore: typos and wrong types fail at compose time.

Also `hydra/sweeper=optuna`: the Optuna sweeper plugin's own config, with our subclass as its target (a study
that survives re-runs, hydra_plugins/yolo_ddp_optuna_sweeper/), the study's SQLite storage in the sweep dir, and the search
space from conf/search/. It replaces the plugin's entry of the same name, so Hydra's plugin scan (which runs
each plugin module, and with it the plugin's own `store`) is done first; the scan runs once per process.
The sweeper is optional (the GPU image has neither the plugin nor optuna): without it nothing is registered
for it, and `hydra/sweeper=optuna` is refused with what to install (`refuse_missing_optuna`).
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass, field
from typing import Any

from hydra.core.config_store import ConfigStore

from yolo_ddp.config import Config

# The versions pyproject.toml pins; optuna 2.10's study storage predates SQLAlchemy 2.
OPTUNA_INSTALL = "pip install hydra-optuna-sweeper==1.2.0 optuna==2.10.1 SQLAlchemy==1.4.54"


def optuna_sweeper_missing() -> str | None:
    """The first of the Optuna sweeper's packages (Hydra's plugin, optuna) that is not installed, else None."""
    for module in ("hydra_plugins.hydra_optuna_sweeper", "optuna"):
        try:
            if importlib.util.find_spec(module) is None:
                return module
        except ImportError:
            return module
    return None


def refuse_missing_optuna(overrides: list[str]) -> None:
    """`hydra/sweeper=optuna` without the optional sweeper installed: one paragraph saying what to install."""
    chosen = any(o.lstrip("+~").partition("=")[::2] == ("hydra/sweeper", "optuna") for o in overrides)
    missing = optuna_sweeper_missing() if chosen else None
    if missing:
        raise ValueError(
            f"hydra/sweeper=optuna needs the optional Optuna sweeper, and `{missing}` is not installed in this "
            f"environment. Install it with `{OPTUNA_INSTALL}` (the versions pinned in pyproject.toml) and run the "
            "same command again; everything else in the launcher works without it."
        )


def _optuna_sweeper_conf() -> type:
    from hydra.core.plugins import Plugins
    from hydra_plugins.hydra_optuna_sweeper.config import OptunaSweeperConf

    Plugins.instance()  # scan now, so the plugin's entry is stored before ours replaces it

    @dataclass
    class YoloDdpOptunaSweeperConf(OptunaSweeperConf):
        _target_: str = "hydra_plugins.yolo_ddp_optuna_sweeper.optuna_sweeper.ResumableOptunaSweeper"
        defaults: list[Any] = field(default_factory=lambda: [{"sampler": "tpe"}, "_self_", {"/search@_here_": "yolo"}])
        # What the job returns, maximised: best mAP50-95 over the run's evaluations; a speed/accuracy front:
        # hydra.sweeper.objectives=[best_mAP50-95,img_per_s] hydra.sweeper.direction=[maximize,maximize]
        objectives: list[str] = field(default_factory=lambda: ["best_mAP50-95"])
        direction: Any = field(default_factory=lambda: ["maximize"])
        # The study lives beside its trials: re-running the command with hydra.sweep.dir=<that dir> continues it.
        storage: Any = "sqlite:///${hydra.sweep.dir}/optuna.db"
        study_name: str | None = "yolo-ddp"
        n_trials: int = 20  # the study's total; a re-run runs only the trials still missing
        n_jobs: int = 1  # trials asked at once: 1 lets every finished trial inform the next

    return YoloDdpOptunaSweeperConf


def register_configs() -> None:
    store = ConfigStore.instance()
    store.store(name="base_config", node=Config)
    if optuna_sweeper_missing() is None:
        store.store(group="hydra/sweeper", name="optuna", node=_optuna_sweeper_conf(), provider="yolo_ddp")
