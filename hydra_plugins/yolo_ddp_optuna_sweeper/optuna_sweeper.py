"""`hydra/sweeper=optuna` in yolo-ddp: the Optuna sweeper plugin with a resumable study (see _impl.py).

Hydra instantiates sweepers only from the `hydra_plugins` namespace package, hence this package; optuna is
imported when a sweep starts, not by the plugin scan every launcher (and every rank) runs.
"""

from __future__ import annotations

from typing import Any

try:
    from hydra_plugins.hydra_optuna_sweeper.optuna_sweeper import OptunaSweeper
except ImportError:  # the optional plugin is not installed: the scan finds no sweeper here, and the launcher
    pass  # refuses hydra/sweeper=optuna with what to install (launcher/store.py)
else:

    class ResumableOptunaSweeper(OptunaSweeper):
        def __init__(self, objectives: list[str], **plugin_args: Any) -> None:
            from ._impl import ResumableOptunaSweeperImpl

            self.sweeper = ResumableOptunaSweeperImpl(list(objectives), **plugin_args)
