"""A 2-rank CPU job logs to one offline W&B run: read it back and find the keys and values, never the API key."""

from __future__ import annotations

import csv
import json
import re
from pathlib import Path

import pytest

from tests.test_dashboard import build, plotted
from tests.test_e2e import run, torchrun
from tests.wandb_records import OfflineRun, offline_runs, read_run
from yolo_ddp.logging import dashboard
from yolo_ddp.plan import RunPlan

pytestmark = pytest.mark.slow

# A key-shaped fake: with it in the environment wandb would go online, so the job forces offline mode itself.
FAKE_KEY = "fakekey0" + "0123456789abcdef" * 2
WANDB = ["logger=wandb", "logger.mode=offline", "logger.log_every_steps=1", "logger.tags=[ci]"]
STEP_KEYS = {"train/box_loss", "train/cls_loss", "train/dfl_loss", "train/lr", "train/amp_scale", "train/epoch",
             "perf/img_per_s", "perf/data_wait_ms", "perf/step_ms", "mem/peak_mem_gib"}
RANK_KEYS = {f"{group}/rank{r}/{k}" for r in (0, 1) for group, k in
             (("perf", "img_per_s"), ("perf", "data_wait_ms"), ("perf", "step_ms"), ("mem", "peak_mem_gib"))}
EPOCH_KEYS = {"epoch", "val/mAP50", "val/mAP50-95", "val/per_class_ap/_type", "val/predictions/_type",
              "epoch/box_loss", "epoch/img_per_s", "epoch/peak_mem_gib"}


def rows(path: Path) -> list[dict[str, str]]:
    with path.open() as f:
        return list(csv.DictReader(f))


def assert_no_key(run_dir: Path, *texts: str) -> None:
    leaks = [p for p in run_dir.rglob("*") if p.is_file() and FAKE_KEY.encode() in p.read_bytes()]
    assert not leaks, f"API key written to {leaks}"
    assert all(FAKE_KEY not in t for t in texts), "API key printed"


def flat(config: dict, prefix: str = "") -> set[str]:
    """The run config's keys as W&B's columns name them (train.batch)."""
    out = set()
    for k, v in config.items():
        out |= flat(v, f"{prefix}{k}.") if isinstance(v, dict) else {f"{prefix}{k}"}
    return out


def assert_view_keys_were_logged(spec: dict, wb: OfflineRun) -> None:
    """Every key the built view plots is one this run logged: history, summary or config, read from its file."""
    seen = plotted(build(spec))
    history = wb.keys()
    logged = history | {k.rsplit("/", 1)[0] for k in history if k.endswith("/_type")}  # tables, images
    assert seen.history and not seen.history - logged, sorted(seen.history - logged)
    assert not seen.summary - (logged | set(wb.summary)), sorted(seen.summary - logged - set(wb.summary))
    assert not set(seen.config) - flat(wb.config), sorted(set(seen.config) - flat(wb.config))
    for regex in seen.regexes:
        assert any(re.fullmatch(regex, k) for k in logged), f"{regex} matches no logged key"
    memory = {k for r in seen.regexes for k in logged if re.fullmatch(r, k) and k.startswith("mem/")}
    assert memory == {"mem/rank0/peak_mem_gib", "mem/rank1/peak_mem_gib", "mem/plan_need_gib"}


def test_two_rank_job_logs_one_offline_run_and_resumes_it(tmp_path):
    env = {"WANDB_API_KEY": FAKE_KEY}
    proc = run(torchrun("train.epochs=2", "logger.dashboard=true", *WANDB), tmp_path, extra_env=env)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    [run_dir] = [p.parent for p in (tmp_path / "out").rglob("metrics.csv")]
    [path] = offline_runs(run_dir)  # one run for the job: not one per rank, none from Ultralytics' callback
    wb = read_run(path)
    assert wb.run_id == (run_dir / "wandb_run_id.txt").read_text()
    assert wb.name == f"pcb_defects-{run_dir.parent.name}-{run_dir.name}" and wb.group == ""
    assert proc.stdout.count("W&B run ") == 1 and "offline: logger.mode=offline" in proc.stdout

    # Once: the resolved config, world size, every rank's device, versions, run plan, topology, sync strategy.
    cfg = wb.config
    assert cfg["train"]["batch"] == 8 and cfg["data"]["imgsz"] == 96 and cfg["logger"]["tags"] == ["ci"]
    assert cfg["world_size"] == 2 and len(cfg["devices"]) == 2 and cfg["devices"][1].startswith("rank1 ")
    assert cfg["run_plan"] == json.loads((run_dir / "plan.json").read_text())
    assert cfg["versions"]["wandb"] == "0.31.0" and cfg["versions"]["torch"].startswith("2.")
    assert cfg["sync_strategy"]["strategy"] == "allreduce" and "Gradient sync" in cfg["sync_plan_text"]
    assert cfg["topology_source"] == "cpu" and "no GPUs" in cfg["topology_matrix"]

    # Per step: every key, and the values steps.csv holds for the same steps.
    expected = STEP_KEYS | RANK_KEYS | EPOCH_KEYS
    assert not expected - wb.keys(), sorted(expected - wb.keys())
    steps = rows(run_dir / "steps.csv")
    plan = cfg["run_plan"]
    assert len(steps) == RunPlan(**plan).schedule.first_step(2)  # logger.log_every_steps=1: a row per step
    assert wb.series("train/box_loss") == pytest.approx([float(s["box_loss"]) for s in steps], abs=1e-6)
    for step in wb.history:
        if "perf/img_per_s" in step:  # global throughput is the sum of the ranks'
            assert step["perf/img_per_s"] == pytest.approx(step["perf/rank0/img_per_s"] + step["perf/rank1/img_per_s"])
            assert step["perf/step_ms"] > 0 and step["mem/rank1/peak_mem_gib"] > 0.1
    assert set(wb.series("train/amp_scale")) == {1.0}  # AMP off on CPU: a disabled scaler reports 1

    # Per epoch: mAP as metrics.csv has it, the per-class AP table, 4 validation images with both box sets.
    metrics = rows(run_dir / "metrics.csv")
    assert wb.series("val/mAP50-95") == pytest.approx([float(m["mAP50-95"]) for m in metrics], abs=1e-6)
    assert wb.series("epoch") == [1, 2]
    table_path = wb.series("val/per_class_ap/path")[-1]
    table = json.loads((path.parent / "files" / table_path).read_text())
    assert table["columns"] == ["class", "AP50-95"] and {r[0] for r in table["data"]} <= {
        "missing_hole", "mouse_bite", "open_circuit", "short", "spur", "spurious_copper"}
    images = wb.history[-1]
    assert images["val/predictions/count"] == 4
    assert all(set(b) == {"predictions", "ground_truth"} for b in images["val/predictions/all_boxes"])
    assert wb.summary["best/mAP50-95"] == pytest.approx(max(float(m["mAP50-95"]) for m in metrics), abs=1e-6)
    assert (run_dir / "results.png").read_bytes()[:4] == b"\x89PNG"
    assert_no_key(run_dir, proc.stdout, proc.stderr)

    # logger.dashboard=true offline: the job wrote the view's spec into its run dir and said so once.
    assert proc.stdout.count("W&B dashboard: nothing created (W&B offline: logger.mode=offline)") == 1
    spec = dashboard.read_spec(run_dir / dashboard.SPEC_FILE)
    assert spec["swept"] == list(dashboard.DEFAULT_AXES)  # not a multirun: the default axes
    assert_view_keys_were_logged(spec, wb)
    assert wb.series("mem/plan_need_gib")[0] == json.loads((run_dir / "memory_plan.json").read_text())["need_GiB"]

    again = run(torchrun("train.epochs=3", "train.resume=true", f"hydra.run.dir={run_dir}", *WANDB), tmp_path,
                extra_env=env)
    assert again.returncode == 0, again.stdout[-3000:] + again.stderr[-3000:]
    runs = [read_run(p) for p in offline_runs(run_dir)]
    assert len(runs) == 2 and {r.run_id for r in runs} == {wb.run_id}  # the same W&B run continues
    assert runs[1].series("epoch") == [3]
    assert_no_key(run_dir, again.stdout, again.stderr)
