"""train.resume: true or a path, the run dir it continues in, and which plan changes a resume survives."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest
from hydra import compose

from tests.test_e2e import epochs_in
from tests.test_e2e import run as launch
from yolo_ddp.config import TrainConfig
from yolo_ddp.engine import checkpoint, resume
from yolo_ddp.engine.checkpoint import CheckpointError
from yolo_ddp.plan import make_plan


@pytest.fixture
def run(tmp_path: Path) -> Path:
    d = tmp_path / "run"
    d.mkdir()
    checkpoint.save_train_state(d / "last.pt", {"epoch": 1})
    return d


@pytest.fixture(autouse=True)
def no_restart(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("TORCHELASTIC_RESTART_COUNT", raising=False)


def test_true_a_file_or_a_dir_name_the_same_checkpoint(run: Path) -> None:
    last = run / "last.pt"
    assert resume.checkpoint_path(True, run) == last
    assert resume.checkpoint_path(str(last), run) == last
    assert resume.checkpoint_path(str(run), run) == last
    assert resume.checkpoint_path(False, run) is None and resume.checkpoint_path(None, run) is None


def test_elastic_restart_continues_the_latest_state(run: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TORCHELASTIC_RESTART_COUNT", "1")
    assert resume.checkpoint_path(False, run) == run / "last.pt"


@pytest.mark.parametrize(
    ("value", "run_dir", "needle"),
    [
        (True, "empty", "train.resume=true but"),
        ("run/nope.pt", "run", "'train.resume'"),
        ("run", "other", "belongs to run dir"),
        ("run/epoch1.pt", "run", "would overwrite the newer"),
    ],
)
def test_unusable_resume_is_a_one_paragraph_error(tmp_path: Path, run: Path, value, run_dir: str, needle: str):
    (tmp_path / "empty").mkdir()
    (tmp_path / "other").mkdir()
    checkpoint.save_train_state(run / "epoch1.pt", {"epoch": 1})
    before = {p: p.read_bytes() for p in run.iterdir()}
    resolved = value if value is True else str(tmp_path / value)
    with pytest.raises(CheckpointError, match=needle) as err:
        resume.load(resolved, tmp_path / run_dir)
    assert "\n" not in str(err.value) and ("last.pt" in str(err.value) or "nope.pt" in str(err.value))
    assert {p: p.read_bytes() for p in run.iterdir()} == before


def test_unreadable_checkpoint(run: Path) -> None:
    (run / "last.pt").write_bytes(b"\x80\x02 not a zip")
    with pytest.raises(CheckpointError, match="cannot be read"):
        resume.load(str(run / "last.pt"), run)


@pytest.mark.skipif(os.name != "posix" or os.geteuid() == 0, reason="root reads files whatever their mode")
def test_checkpoint_without_read_permission(run: Path) -> None:
    (run / "last.pt").chmod(0)
    try:
        with pytest.raises(CheckpointError, match="PermissionError"):
            resume.load(True, run)
    finally:
        (run / "last.pt").chmod(0o644)


@pytest.mark.parametrize("value", ["", "   ", 3, [1]])
def test_train_resume_type_is_checked(value) -> None:
    with pytest.raises(ValueError, match="train.resume"):
        TrainConfig(resume=value)


# --- the run dir follows train.resume ----------------------------------------------------------------------




def hydra_run(*overrides: str):
    return compose(config_name="config", overrides=["+experiment=pcb_defects", *overrides],
                   return_hydra_config=True).hydra


def test_run_dir_follows_a_resume_path(hydra_ctx, run: Path, tmp_path: Path) -> None:
    fresh = hydra_run()
    assert fresh.output_subdir == ".hydra" and fresh.run.dir != str(run)
    for value in (run, run / "last.pt"):
        h = hydra_run(f"train.resume={value}")
        assert h.run.dir == str(run) and h.output_subdir == ".hydra/resumed"  # the run's own .hydra/ is kept
    assert hydra_run(f"train.resume={tmp_path / 'typo.pt'}").run.dir == fresh.run.dir  # no dir at a typo
    assert hydra_run(f"train.resume={run}", f"hydra.run.dir={tmp_path}").run.dir == str(tmp_path)


# --- world size changed on resume --------------------------------------------------------------------------


def plan(batch: int, world: int, images: int = 1000, nbs: int = 64):
    return make_plan(TrainConfig(batch=batch, nbs=nbs), 320, world, "off", "cpu", images)


def test_more_epochs_continue_unless_the_warmup_moves_the_resumed_epoch(tmp_path: Path) -> None:
    def warm(epochs: int, warmup: float = 3.0):
        return make_plan(TrainConfig(batch=8, nbs=64, epochs=epochs, warmup_epochs=warmup), 320, 1, "off", "cpu", 64)

    assert resume.check_plan(warm(10).as_dict(), warm(20), tmp_path / "last.pt", epoch=10) is None
    assert resume.check_plan(warm(10).as_dict(), warm(20), tmp_path / "last.pt", epoch=2) is None  # same warmup
    with pytest.raises(CheckpointError, match=r"1 finished epoch\(s\) of a 3-epoch run.*train\.epochs=2 .*Resume with the run's train\.epochs=3"):
        resume.check_plan(warm(3).as_dict(), warm(2), tmp_path / "last.pt", epoch=1)  # warmup capped at 1 epoch
    # A train.time run that ran out inside its last epoch saved epoch 5 before epoch 5's first step: finished.
    ended = warm(5)
    first = ended.schedule.first_step(5)
    assert resume.check_plan(ended.as_dict(), warm(20), tmp_path / "last.pt", epoch=5, step=first) is None
    with pytest.raises(CheckpointError, match=r"ended inside epoch 5 .*train\.time budget.*model\.weights="):
        resume.check_plan(ended.as_dict(), warm(20), tmp_path / "last.pt", epoch=5, step=first - 1)


def test_world_size_change_with_the_same_plan_continues(tmp_path: Path) -> None:
    saved = plan(32, 2).as_dict()
    message = resume.check_plan(saved, plan(32, 4), tmp_path / "last.pt")
    assert "2 -> 4 ranks" in message and "per-rank batch 16 -> 8" in message
    assert resume.check_plan(saved, plan(32, 2), tmp_path / "last.pt") is None


@pytest.mark.parametrize(("batch", "world", "images", "needle"),
                         [(16, 4, 1000, "global_batch 32 -> 16"), (32, 4, 640, "loader_batches_per_epoch 32 -> 20")])
def test_plan_change_is_refused(tmp_path: Path, batch: int, world: int, images: int, needle: str) -> None:
    with pytest.raises(CheckpointError, match=needle) as err:
        resume.check_plan(plan(32, 2).as_dict(), plan(batch, world, images), tmp_path / "last.pt")
    assert "train.batch=32" in str(err.value) and "\n" not in str(err.value)


# --- end to end: a path resume on another world size, and a refused plan change ----------------------------


@pytest.mark.slow
def test_resume_by_path_on_another_world_size_then_refuse_a_new_batch(tmp_path: Path) -> None:
    launcher = [sys.executable, "-m", "launcher"]
    # No warmup: a 1-epoch run has none (Ultralytics caps it at epochs - 1), a 2-epoch one would.
    first = launch([*launcher, "launcher.nproc_per_node=2", "train.epochs=1", "train.warmup_epochs=0"], tmp_path)
    assert first.returncode == 0, first.stdout[-3000:] + first.stderr[-3000:]
    [run_dir] = [p.parent for p in (tmp_path / "out").rglob("metrics.csv")]

    # No hydra.run.dir: the run continues in the checkpoint's dir, on one rank with the same global batch.
    again = launch([*launcher, "launcher.nproc_per_node=1", "train.epochs=2", "train.warmup_epochs=0",
                    f"train.resume={run_dir / 'last.pt'}"], tmp_path)
    assert again.returncode == 0, again.stdout[-3000:] + again.stderr[-3000:]
    assert "world size changed on resume: 2 -> 1 ranks, per-rank batch 4 -> 8" in again.stdout
    assert epochs_in(run_dir / "metrics.csv") == [1, 2]
    assert (run_dir / ".hydra/config.yaml").exists() and (run_dir / ".hydra/resumed/config.yaml").exists()

    kept = {name: (run_dir / name).read_bytes() for name in ("last.pt", "plan.json", "metrics.csv")}
    refused = launch([*launcher, "launcher.nproc_per_node=1", "train.epochs=3", "train.batch=4",
                      f"train.resume={run_dir}"], tmp_path)
    assert refused.returncode != 0 and "global_batch 8 -> 4" in refused.stderr, refused.stderr[-3000:]
    assert "Traceback" not in refused.stderr
    assert {name: (run_dir / name).read_bytes() for name in kept} == kept
    assert len([p for p in (tmp_path / "out").rglob("metrics.csv")]) == 1  # no second run dir
