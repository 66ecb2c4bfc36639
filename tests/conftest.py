"""Shared test set-up: offline everything, repo paths, and a free-port helper for gloo groups."""

from __future__ import annotations

import os
import shutil
import socket
import sys
import tempfile
from pathlib import Path

import pytest

os.environ.setdefault("YOLO_OFFLINE", "1")
os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("WANDB_SILENT", "true")

# data.cache=ram stores of this session (its launcher subprocesses included) go to a tmpfs dir of their own,
# removed at the end, never into the node's shared /dev/shm/yolo_ddp.
_SHM = Path(tempfile.mkdtemp(prefix="yolo_ddp_tests_", dir="/dev/shm" if os.path.isdir("/dev/shm") else None))
os.environ["YOLO_DDP_SHM_DIR"] = str(_SHM)

REPO = Path(__file__).resolve().parents[1]
CONF = REPO / "conf"


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def repo() -> Path:
    return REPO


@pytest.fixture
def python() -> str:
    return sys.executable


@pytest.fixture
def hydra_ctx():
    """Hydra's compose API over conf/, with the schema and resolvers the launcher registers."""
    from hydra import initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    from launcher.job.names import register_resolvers
    from launcher.store import register_configs

    register_resolvers()
    register_configs()
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        yield
    GlobalHydra.instance().clear()


def pytest_sessionfinish(session, exitstatus) -> None:
    shutil.rmtree(_SHM, ignore_errors=True)
