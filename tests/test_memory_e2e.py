"""The memory planner as a user meets it: plan=true, batch=auto under torchrun, a plan that cannot fit."""

from __future__ import annotations

import json
import sys

import pytest

from tests.test_e2e import run, torchrun

pytestmark = pytest.mark.slow


def launcher(*overrides: str) -> list[str]:
    return [sys.executable, "-m", "launcher", "launcher.nproc_per_node=2", *overrides]  # a DDP job on CPU


@pytest.mark.parametrize(("model", "imgsz"), [("yolov8n", 320), ("yolov8s", 640)])
def test_plan_true_prints_the_plan_and_trains_nothing(tmp_path, model, imgsz):
    proc = run(launcher(f"model={model}", f"data.imgsz={imgsz}", "plan=true"), tmp_path)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    out = proc.stdout
    assert f"Memory plan per rank on cpu: {model}.yaml at {imgsz} px" in out and "nothing was trained" in out
    for component in ("weights", "gradients", "optimizer state", "EMA", "DDP buckets", "activations (4 img)"):
        assert component in out
    assert not list((tmp_path / "out").rglob("metrics.csv")) and not list((tmp_path / "out").rglob("*.pt"))


def test_a_plan_that_cannot_fit_is_refused_with_the_fix(tmp_path):
    proc = run(launcher("train.memory_fraction=0.00001", "train.allow_downgrade=[]", "plan=true"), tmp_path)
    assert proc.returncode == 2
    assert "Out of memory before the first step" in proc.stderr and "train.allow_downgrade" in proc.stderr


def test_batch_auto_with_multi_scale_and_progressive_resize(tmp_path):
    proc = run(torchrun("train.batch=auto", "train.epochs=2", "train.multi_scale=[0.5,1.5]",
                        "train.imgsz_schedule=[[0,64],[1,96]]"), tmp_path)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    [run_dir] = [p.parent for p in (tmp_path / "out").rglob("metrics.csv")]
    plan = json.loads((run_dir / "plan.json").read_text())
    memory = json.loads((run_dir / "memory_plan.json").read_text())
    # cpu_quick: nbs 16 over 2 ranks; auto never passes the nominal batch, accumulation keeps it
    assert plan["batch_per_rank"] == memory["batch_per_rank"] == 8 and plan["effective_batch"] == 16
    assert memory["imgsz"] == 128  # planned for the largest step: 96 px x 1.5, rounded to the stride
