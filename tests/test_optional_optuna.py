"""The Optuna sweeper is optional: the launcher imports, composes and trains without the plugin and optuna (the
GPU image has neither), and `hydra/sweeper=optuna` then says what to install instead of a traceback.

The missing packages are simulated in a subprocess: a `sitecustomize` on PYTHONPATH puts an import blocker first
on `sys.meta_path` (bench/gpu_session.sh image-smoke checks the same in a venv that really lacks them)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import REPO

BLOCKER = '''
import sys

class _NotInstalled:
    """Import `optuna` and Hydra's Optuna sweeper plugin as if they were not installed."""

    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] == "optuna" or name.startswith("hydra_plugins.hydra_optuna_sweeper"):
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)
        return None

sys.meta_path.insert(0, _NotInstalled())
'''


@pytest.fixture(scope="module")
def without_optuna(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    site = tmp_path_factory.mktemp("no_optuna")
    (site / "sitecustomize.py").write_text(BLOCKER)
    path = os.pathsep.join([str(site), str(REPO), os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    return {**os.environ, "PYTHONPATH": path, "CUDA_VISIBLE_DEVICES": "", "YOLO_OFFLINE": "1"}


def run(env: dict[str, str], *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, *args], capture_output=True, text=True, env=env, timeout=180, cwd=REPO)


def test_the_blocker_hides_both_packages(without_optuna):
    code = ("import importlib\nfor m in ('optuna', 'hydra_plugins.hydra_optuna_sweeper.config'):\n"
            "    try:\n        importlib.import_module(m)\n    except ImportError:\n        print('missing', m)")
    proc = run(without_optuna, "-c", code)
    assert proc.stdout.split("\n")[:2] == ["missing optuna", "missing hydra_plugins.hydra_optuna_sweeper.config"]


def test_launcher_imports_and_composes_without_the_optuna_sweeper(without_optuna):
    proc = run(without_optuna, "-c", "import launcher.__main__, launcher.store, launcher.sweep.summary")
    assert proc.returncode == 0, proc.stderr[-2000:]
    proc = run(without_optuna, "-m", "launcher", "+experiment=pcb_defects", "data.imgsz=320", "--cfg", "job")
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "imgsz: 320" in proc.stdout
    assert "Error importing" not in proc.stderr  # Hydra's plugin scan finds nothing broken in hydra_plugins/


def test_optuna_sweeper_without_the_packages_says_what_to_install(without_optuna):
    proc = run(without_optuna, "-m", "launcher", "-m", "hydra/sweeper=optuna", "+experiment=pcb_defects",
               "--cfg", "hydra")
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: hydra/sweeper=optuna needs the optional Optuna sweeper")
    assert "pip install hydra-optuna-sweeper==1.2.0 optuna==2.10.1" in lines[0]


def test_the_advice_pins_what_pyproject_pins():
    from launcher.store import OPTUNA_INSTALL

    pyproject = (Path(REPO) / "pyproject.toml").read_text()
    for pin in OPTUNA_INSTALL.split()[2:]:
        assert f'"{pin}"' in pyproject, pin
