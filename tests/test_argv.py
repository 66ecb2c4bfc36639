"""Hydra flags in any order, with or without a GPU: the launcher puts flags first and overrides after."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
from hydra._internal.utils import get_args_parser

from launcher.argv import INFO_CHOICES, INFO_FLAGS, VALUE_FLAGS, normalize_argv
from tests.conftest import REPO


def test_flag_table_matches_the_installed_hydra():
    actions = {s: a for a in get_args_parser()._actions for s in a.option_strings}
    takes_value = {s for s, a in actions.items() if a.nargs is None and a.option_strings and a.const is None
                   and type(a).__name__ == "_StoreAction"}
    assert takes_value == VALUE_FLAGS
    assert {s for s, a in actions.items() if a.nargs == "?"} == INFO_FLAGS
    assert set(actions["--info"].choices) == INFO_CHOICES and actions["--info"].const == "all"


@pytest.mark.parametrize(("argv", "want"), [
    (["+experiment=x", "--cfg", "job"], ["--cfg", "job", "+experiment=x", "train=cpu_quick"]),
    (["--cfg", "job", "+experiment=x"], ["--cfg", "job", "+experiment=x", "train=cpu_quick"]),
    (["a=1", "--info", "b=2"], ["--info=all", "a=1", "b=2", "train=cpu_quick"]),
    (["a=1", "-i", "defaults", "b=2"], ["--info=defaults", "a=1", "b=2", "train=cpu_quick"]),
    (["a=1", "--help"], ["--help", "a=1", "train=cpu_quick"]),
    (["-m", "a=1,2", "-cn", "config", "b=3"], ["-m", "-cn", "config", "a=1,2", "b=3", "train=cpu_quick"]),
])
def test_overrides_move_after_the_flags(argv, want):
    assert normalize_argv(["launcher", *argv], ["train=cpu_quick"]) == ["launcher", *want]


def hydra_cli(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": "", "YOLO_OFFLINE": "1"}
    return subprocess.run([sys.executable, "-m", "launcher", *args], capture_output=True, text=True, env=env,
                          timeout=120, cwd=REPO)


@pytest.mark.slow
@pytest.mark.parametrize("flags", [["--cfg", "job"], ["--info"], ["--help"]])
def test_flags_after_overrides_without_a_gpu(flags):
    # The CPU profile used to be appended after the flags: "unrecognized arguments: train=cpu_quick".
    proc = hydra_cli("+experiment=pcb_defects", "data.imgsz=320", *flags)
    assert proc.returncode == 0, proc.stderr[-2000:]
    if flags == ["--cfg", "job"]:
        assert "imgsz: 320" in proc.stdout and "epochs: 12" in proc.stdout  # the override and the CPU profile
