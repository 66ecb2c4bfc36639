"""Bad input from the command line: one paragraph naming the key or file and the fix, non-zero exit,
nothing already written is lost."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow  # each case starts the launcher in a subprocess


def launch(*overrides: str, tmp: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "YOLO_DDP_OUTPUTS": str(tmp / "out"), "CUDA_VISIBLE_DEVICES": ""}
    return subprocess.run([sys.executable, "-m", "launcher", "+experiment=pcb_defects", *overrides],
                          capture_output=True, text=True, env=env, timeout=120, cwd=REPO)


def assert_clean_error(proc: subprocess.CompletedProcess, *needles: str) -> None:
    assert proc.returncode != 0
    assert "Traceback" not in proc.stderr, proc.stderr[-2000:]
    for needle in needles:
        assert needle in proc.stderr, proc.stderr[-2000:]


def test_missing_data_path(tmp_path):
    proc = launch(f"data.path={tmp_path / 'nope.yaml'}", tmp=tmp_path)
    assert_clean_error(proc, "data.path", "nope.yaml")
    assert proc.returncode == 2


def test_data_yaml_without_names(tmp_path):
    (tmp_path / "images" / "train").mkdir(parents=True)
    (tmp_path / "images" / "val").mkdir(parents=True)
    bad = tmp_path / "data.yaml"
    bad.write_text(yaml.safe_dump({"path": str(tmp_path), "train": "images/train", "val": "images/val"}))
    assert_clean_error(launch(f"data.path={bad}", tmp=tmp_path), "names", str(bad))


def test_batch_that_does_not_split(tmp_path):
    assert_clean_error(launch("train.batch=7", "launcher.nproc_per_node=2", tmp=tmp_path), "train.batch=7", "e.g.")


@pytest.mark.parametrize(("override", "needle"), [("data.imgsz=300", "data.imgsz"), ("train.amp=fp8", "train.amp")])
def test_bad_values(tmp_path, override, needle):
    assert_clean_error(launch(override, tmp=tmp_path), needle)


def test_typo_key_fails_before_anything_runs(tmp_path):
    proc = launch("train.bacth=16", tmp=tmp_path)
    assert proc.returncode != 0 and "bacth" in proc.stderr
    assert not (tmp_path / "out").exists()


def test_resume_from_corrupt_checkpoint_keeps_it(tmp_path):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "last.pt").write_bytes(b"not a checkpoint")
    proc = launch("train.resume=true", f"hydra.run.dir={run_dir}", tmp=tmp_path)
    assert_clean_error(proc, "last.pt", "cannot be read")
    assert proc.returncode == 2
    assert (run_dir / "last.pt").read_bytes() == b"not a checkpoint"
    assert not (run_dir / "launcher.log").exists() and not (run_dir / ".hydra/config.yaml").exists()


def test_resume_from_a_missing_path(tmp_path):
    proc = launch(f"train.resume={tmp_path / 'gone' / 'last.pt'}", tmp=tmp_path)
    assert_clean_error(proc, "'train.resume'", "gone/last.pt does not exist")
    assert proc.returncode == 2 and not (tmp_path / "gone").exists()


def test_nccl_without_a_gpu_is_refused_before_workers_start(tmp_path):
    proc = launch("dist.backend=nccl", tmp=tmp_path)
    assert_clean_error(proc, "dist.backend=nccl needs CUDA GPUs", "dist.backend=auto")
    assert proc.returncode == 2 and not list((tmp_path / "out").rglob("rank*.log"))


def torchrun_one_rank(override: str, tmp: Path) -> subprocess.CompletedProcess:
    """`torchrun --nproc_per_node=1 -m launcher +experiment=pcb_defects <override>` on a machine without GPU."""
    env = {**os.environ, "YOLO_DDP_OUTPUTS": str(tmp / "out"), "CUDA_VISIBLE_DEVICES": "", "YOLO_OFFLINE": "1"}
    return subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=1", "-m", "launcher",
                           "+experiment=pcb_defects", override],
                          capture_output=True, text=True, env=env, timeout=120, cwd=REPO)


def test_nccl_without_a_gpu_under_torchrun(tmp_path):
    proc = torchrun_one_rank("dist.backend=nccl", tmp_path)
    assert proc.returncode != 0
    assert "error: Config key 'dist.backend': dist.backend=nccl needs CUDA GPUs" in proc.stderr, proc.stderr[-2000:]


def test_missing_local_weights(tmp_path):
    proc = launch(f"model.weights={tmp_path / 'w.pt'}", "train.epochs=1", "data.synthetic.n_train=16",
                  "data.synthetic.n_val=8", "data.synthetic.image_size=64", "data.imgsz=64", "train.batch=4",
                  f"data.cache_dir={tmp_path / 'cache'}", tmp=tmp_path)
    assert proc.returncode != 0
    assert "model.weights" in proc.stderr and "Nothing is downloaded" in proc.stderr


def test_fresh_run_in_an_occupied_run_dir_changes_nothing(tmp_path):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    files = {"last.pt": b"state", "resolved_config.yaml": b"old config", "metrics.csv": b"epoch\n1\n"}
    for name, data in files.items():
        (run_dir / name).write_bytes(data)
    proc = launch(f"hydra.run.dir={run_dir}", tmp=tmp_path)
    assert_clean_error(proc, "already holds a run", "train.resume=true")
    for name, data in files.items():
        assert (run_dir / name).read_bytes() == data
    assert not (run_dir / "launcher.log").exists()


def test_torchrun_failure_summary_shows_the_error_as_root_cause(tmp_path):
    proc = torchrun_one_rank("train.amp=fp8", tmp_path)
    assert proc.returncode != 0
    summary = proc.stderr[proc.stderr.index("Root Cause"):]  # torchrun's own failure summary
    assert "error_file: <N/A>" not in summary, summary
    assert "Config key 'train.amp'" in summary and "To enable traceback" not in summary, summary
