"""yolo_ddp.logging without processes: rank roles, local reports, W&B mode/naming rules, Ultralytics' callback off."""

from __future__ import annotations

import csv
import json
import logging as stdlib_logging
from dataclasses import replace
from pathlib import Path

import pytest

from launcher.job.names import name_from_overrides, swept_keys
from tests.wandb_records import offline_runs, read_run, records
from yolo_ddp.config import LoggerConfig
from yolo_ddp.logging import NullWriter, RunWriter, disable_ultralytics_wandb, make_writer, wandb_run
from yolo_ddp.logging import console as console_mod
from yolo_ddp.logging.sweep import job_row, write_summary

PNG = b"\x89PNG\r\n\x1a\n"


def test_package_named_logging_still_gets_the_stdlib():
    assert console_mod.logging is stdlib_logging and stdlib_logging.getLogger is not None


def test_rank_roles_and_same_interface(tmp_path):
    assert type(make_writer(1, tmp_path, LoggerConfig(name="wandb"))) is NullWriter  # never a W&B run off rank 0
    assert type(make_writer(0, tmp_path, LoggerConfig(name="none"))) is RunWriter
    public = {n for n in dir(RunWriter) if not n.startswith("_") and callable(getattr(RunWriter, n))}
    assert public <= {n for n in dir(NullWriter) if not n.startswith("_")}


def test_auto_logger_is_csv_without_wandb(tmp_path, monkeypatch):
    from yolo_ddp.logging import writer as writer_mod

    monkeypatch.setattr(writer_mod, "wandb_importable", lambda: False)
    w = make_writer(0, tmp_path, LoggerConfig())
    assert type(w) is RunWriter and w.wandb is None
    with pytest.raises(ValueError, match="logger=csv"):
        make_writer(0, tmp_path, LoggerConfig(name="wandb"))


@pytest.mark.parametrize(("override", "key"), [({"name": "tensorboard"}, "logger"), ({"mode": "cloud"}, "logger.mode"),
                                               ({"log_every_steps": 0}, "logger.log_every_steps")])
def test_bad_logger_values_name_the_key(override, key):
    with pytest.raises(ValueError, match=f"'{key}'"):
        LoggerConfig(**override)


def test_local_reports_csv_and_plot(tmp_path):
    w = RunWriter(tmp_path)
    ranks = [{"img_per_s": 10.0, "data_wait_ms": 1.0, "step_ms": 50.0, "peak_mem_gib": 1.5},
             {"img_per_s": 12.0, "data_wait_ms": 3.0, "step_ms": 55.0, "peak_mem_gib": 1.2}]
    w.step_row(10, {"box_loss": 1.0, "lr": 0.01}, ranks)
    for epoch, m in ((1, ""), (2, 0.25)):
        w.epoch_row({"epoch": epoch, "step": 10 * epoch, "box_loss": 1.0 / epoch, "cls_loss": 2.0, "dfl_loss": 1.0,
                     "mAP50": m, "mAP50-95": m, "lr": 0.01})
    [step] = list(csv.DictReader((tmp_path / "steps.csv").open()))
    assert float(step["img_per_s"]) == 22.0 and float(step["data_wait_ms"]) == 3.0  # sum / slowest rank
    assert float(step["rank1_step_ms"]) == 55.0 and float(step["peak_mem_gib"]) == 1.5
    rows = list(csv.DictReader((tmp_path / "metrics.csv").open()))
    assert [r["mAP50-95"] for r in rows] == ["", "0.25"]
    assert (tmp_path / "results.png").read_bytes()[:8] == PNG
    # A resumed run whose rows gained a column keeps the file's header instead of shifting columns.
    w.epoch_row({"epoch": 3, "step": 30, "box_loss": 0.3, "new_key": 1, "cls_loss": 2.0, "dfl_loss": 1.0,
                 "mAP50": 0.3, "mAP50-95": 0.3, "lr": 0.01})
    assert list(csv.DictReader((tmp_path / "metrics.csv").open()))[-1]["mAP50-95"] == "0.3"


def test_ultralytics_wandb_callback_is_off_without_touching_user_settings(monkeypatch):
    from ultralytics.utils import SETTINGS, TESTS_RUNNING
    from ultralytics.utils.callbacks import base
    from ultralytics.utils.callbacks import wb as ultralytics_wb

    assert TESTS_RUNNING and ultralytics_wb.wb is None  # Ultralytics' own guard: its callback is dead under pytest
    before = Path(SETTINGS.file).read_bytes() if Path(SETTINGS.file).exists() else None
    dict.__setitem__(SETTINGS, "wandb", True)  # as if the user had turned it on, without saving
    disable_ultralytics_wandb()
    assert SETTINGS["wandb"] is False
    assert (Path(SETTINGS.file).read_bytes() if Path(SETTINGS.file).exists() else None) == before

    class FakeTrainer:  # add_integration_callbacks picks integrations by class name
        callbacks: dict = {}

    trainer = FakeTrainer()
    trainer.callbacks = {k: [] for k in base.default_callbacks}
    FakeTrainer.__name__ = "DetectionTrainer"
    base.add_integration_callbacks(trainer)
    modules = {cb.__module__ for cbs in trainer.callbacks.values() for cb in cbs}
    assert not any(m.endswith(".wb") for m in modules), modules


@pytest.mark.parametrize(("env", "mode", "expected"), [
    ({}, "auto", "offline"),
    ({"WANDB_API_KEY": "k" * 40}, "auto", "online"),
    ({"WANDB_API_KEY": "k" * 40, "WANDB_MODE": "offline"}, "auto", "offline"),
    ({"WANDB_API_KEY": "k" * 40}, "offline", "offline"),
    ({}, "disabled", "disabled"),
])
def test_wandb_mode(env, mode, expected, monkeypatch, tmp_path):
    for k in ("WANDB_API_KEY", "WANDB_MODE"):
        monkeypatch.delenv(k, raising=False)
    (tmp_path / "netrc").write_text("")
    monkeypatch.setenv("NETRC", str(tmp_path / "netrc"))  # no `wandb login` entry
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    assert wandb_run.resolve_mode(mode)[0] == expected


def test_netrc_login_counts_as_a_key(monkeypatch, tmp_path):
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    netrc = tmp_path / "netrc"
    netrc.write_text("machine api.wandb.ai\n  login user\n  password " + "p" * 40 + "\n")
    netrc.chmod(0o600)
    monkeypatch.setenv("NETRC", str(netrc))
    assert wandb_run.api_key_configured()


def test_redact_replaces_values_that_hold_a_key():
    key = "s3cr3t" * 7
    assert wandb_run.redact({"a": {"b": f"x{key}y", "c": [1, key]}, "d": "ok"}, [key]) == \
        {"a": {"b": "<redacted>", "c": [1, "<redacted>"]}, "d": "ok"}


def test_sweep_job_names():
    argv = ["-m", "+experiment=pcb_defects", "train.batch=16,32", "data.imgsz=320,640", "train.epochs=1"]
    assert swept_keys(argv) == ["train.batch", "data.imgsz"]
    job = ["+experiment=pcb_defects", "train.batch=16", "data.imgsz=640", "train.epochs=1"]
    assert name_from_overrides(job, swept_keys(argv)) == "batch=16,imgsz=640"
    assert name_from_overrides(["a.x=1", "b.x=2"], ["a.x", "b.x"]) == "a.x=1,b.x=2"  # ambiguous short keys stay long
    assert name_from_overrides(["train.epochs=1"], []) == "epochs=1"  # no sweep syntax seen: every override


def test_sweep_summary_rows_for_completed_and_failed_jobs(tmp_path):
    done = tmp_path / "0"
    done.mkdir()
    (done / "plan.json").write_text(json.dumps({"world_size": 2, "batch_per_rank": 4, "accumulate": 2, "imgsz": 96}))
    RunWriter(done).epoch_row({"epoch": 1, "step": 2, "mAP50-95": 0.1, "img_per_s": 30.0, "peak_mem_gib": 1.0})
    RunWriter(done).epoch_row({"epoch": 2, "step": 4, "mAP50-95": 0.2, "img_per_s": 40.0, "peak_mem_gib": 1.1})
    rows = [job_row(0, "batch=8", ["train.batch=8"], "COMPLETED", done),
            job_row(1, "batch=7", ["train.batch=7"], "FAILED", tmp_path / "1", "train.batch=7 must split\nevenly")]
    write_summary(tmp_path, rows)
    got = list(csv.DictReader((tmp_path / "sweep_summary.csv").open()))
    assert [(r["job"], r["status"]) for r in got] == [("0", "COMPLETED"), ("1", "FAILED")]
    assert got[0]["best_mAP50-95"] == "0.2" and got[0]["img_per_s"] == "40.0" and got[0]["batch_per_rank"] == "4"
    assert got[1]["error"] == "train.batch=7 must split evenly" and got[1]["world_size"] == ""
    assert (tmp_path / "sweep_summary.png").read_bytes()[:8] == PNG


def test_in_process_offline_run_reads_back(tmp_path, monkeypatch):
    """The writer's W&B path in one process (the 2-rank job is tests/test_wandb.py)."""
    monkeypatch.setenv("WANDB_MODE", "offline")
    cfg = LoggerConfig(name="wandb", mode="offline", group="g1", run_name="batch=8", tags=["t"])
    w = make_writer(0, tmp_path, cfg, {"name": "unit", "train": {"batch": 8}})
    w.run_info({"world_size": 1, "topology_matrix": "(no GPUs)"})
    w.step_row(1, {"box_loss": 0.5, "lr": 0.01}, [{"img_per_s": 5.0, "data_wait_ms": 1.0, "step_ms": 9.0,
                                                    "peak_mem_gib": 0.5}])
    w.epoch_row({"epoch": 1, "step": 1, "mAP50": 0.4, "mAP50-95": 0.3}, {"a": 0.3, "b": 0.2})
    w.close()
    [path] = offline_runs(tmp_path)
    run = read_run(path)
    assert (run.name, run.group, run.run_id) == ("batch=8", "g1", (tmp_path / "wandb_run_id.txt").read_text())
    assert run.config["train"] == {"batch": 8} and run.config["world_size"] == 1
    assert run.series("train/box_loss") == [0.5] and run.series("perf/rank0/img_per_s") == [5.0]
    assert run.series("val/mAP50-95") == [0.3] and run.series("val/per_class_ap/nrows") == [2]
    assert run.summary["best/mAP50-95"] == 0.3
    # A second writer for the same run dir continues the same run id (resume); log_model uploads the weights.
    (tmp_path / "best.pt").write_bytes(b"best")
    (tmp_path / "last.pt").write_bytes(b"last")
    again = make_writer(0, tmp_path, replace(cfg, log_model=True), {"name": "unit"})
    again.close()
    assert {read_run(p).run_id for p in offline_runs(tmp_path)} == {run.run_id}
    artifacts = [r.artifact for p in offline_runs(tmp_path) for r in records(p) if r.HasField("artifact")
                 and r.artifact.type == "model"]
    assert [a.name for a in artifacts] == [f"model-{run.run_id}"]
    assert {e.path for e in artifacts[0].manifest.contents} == {"best.pt", "last.pt"}
