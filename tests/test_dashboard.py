"""The team's W&B view as code: built with wandb-workspaces, written as dashboard.json without a key, saved and
loaded back by URL with one. Whether its keys are ones a real run logs is checked against real runs in
tests/test_wandb.py (a 2-rank job) and tests/test_sweep_summary.py (a 2-point multirun)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from yolo_ddp.logging import dashboard

REPO = Path(__file__).resolve().parent.parent
wr = pytest.importorskip("wandb_workspaces.reports.v2", reason="wandb-workspaces is the wandb extra")


@dataclass
class Plotted:
    """What a built view plots, read from the wandb-workspaces objects (not from our spec)."""

    history: set[str] = field(default_factory=set)
    regexes: list[str] = field(default_factory=list)
    summary: set[str] = field(default_factory=set)
    config: list[str] = field(default_factory=list)  # the parallel-coordinates config axes, in order
    sections: list[str] = field(default_factory=list)


def plotted(workspace) -> Plotted:
    out = Plotted()

    def metric(m) -> None:
        if isinstance(m, wr.Config):
            out.config.append(m.name)
        elif isinstance(m, wr.SummaryMetric):
            out.summary.add(m.name)
        elif m not in (None, "Step"):
            out.history.add(m.name if isinstance(m, wr.Metric) else m)

    for section in workspace.sections:
        out.sections.append(section.name)
        for p in section.panels:
            if isinstance(p, wr.LinePlot):
                for m in [p.x, *p.y]:
                    metric(m)
                if p.metric_regex:
                    out.regexes.append(p.metric_regex)
            elif isinstance(p, wr.WeavePanelSummaryTable):
                out.summary.add(p.table_name)
            elif isinstance(p, wr.ParallelCoordinatesPlot):
                for c in p.columns:
                    metric(c.metric)
            elif isinstance(p, wr.ScatterPlot):
                metric(p.x)
                metric(p.y)
            else:
                raise AssertionError(f"a panel the test does not read: {type(p).__name__}")
    return out


def build(spec: dict):
    from yolo_ddp.logging.dashboard.wandb_view import build_workspace

    return build_workspace(spec, "ci-entity")


def test_view_has_the_five_sections_and_every_panel_kind_builds():
    spec = dashboard.view_spec("acme", "pcb", ["train.batch", "data.imgsz", "model"])
    seen = plotted(build(spec))
    assert seen.sections == ["Accuracy", "Losses", "Throughput and scaling", "Memory", "Sweeps"]
    assert seen.config == ["train.batch", "data.imgsz", "model.cfg"]  # a config group's axis is its naming leaf
    assert "best/mAP50-95" in seen.summary and "val/per_class_ap" in seen.summary
    model = build(spec)._to_model()  # what wandb-workspaces would send: grouped by the run's W&B group
    assert [g.name for g in model.spec.section.run_sets[0].grouping] == ["group"]


def test_spec_round_trips_and_bad_specs_name_the_file(tmp_path):
    spec = dashboard.view_spec("", "pcb")
    path = dashboard.write_spec(spec, tmp_path)
    assert dashboard.read_spec(path) == spec and not list(tmp_path.glob("*.tmp"))
    (tmp_path / "broken.json").write_text('{"view": "yolo-ddp",\n  oops}')
    with pytest.raises(ValueError, match=r"broken.json line 2: not valid JSON"):
        dashboard.read_spec(tmp_path / "broken.json")
    (tmp_path / "other.json").write_text('{"a": 1}')
    with pytest.raises(ValueError, match="not a yolo-ddp dashboard spec"):
        dashboard.read_spec(tmp_path / "other.json")
    spec["sections"][1]["panels"][0]["kind"] = "heatmap"
    dashboard.write_spec(spec, tmp_path / "edited")
    with pytest.raises(ValueError, match="section 'Losses' has a panel of kind 'heatmap'; the kinds are line"):
        dashboard.read_spec(tmp_path / "edited" / dashboard.SPEC_FILE)


def test_sweep_report_builds_offline(tmp_path):
    """The report object builds from a report spec without W&B (saving it is the online test's job)."""
    from yolo_ddp.logging.dashboard.wandb_view import build_report

    run_dir = tmp_path / "0"
    run_dir.mkdir()
    (run_dir / "wandb_run_id.txt").write_text("abc12345")
    row = {"job": 0, "name": "batch=4", "params": "train.batch=4", "status": "COMPLETED", "objective": "0.5",
           "command": "python -m launcher train.batch=4", "run_dir": str(run_dir), "best_mAP50-95": 0.5}
    report = dashboard.sweep_report_spec(tmp_path, "sweep-x", [row], row, tmp_path / "s.csv", tmp_path / "s.png")
    assert report["best"]["run_id"] == "abc12345" and report["rows"][0][1] == "batch=4"
    built = build_report(report, "ci-entity", "pcb", "sum12345")  # a runset's model needs the API: objects only
    grids = [b for b in built.blocks if isinstance(b, wr.PanelGrid)]
    assert [g.runsets[0].filters for g in grids] == ["ID = 'sum12345'", "ID = 'abc12345'"]
    assert grids[0].panels[0].media_keys == ["sweep/summary"]
    assert [p.y for p in grids[1].panels][:2] == [["val/mAP50-95"], ["val/mAP50"]]
    assert any(isinstance(b, wr.MarkdownBlock) and "| 0 | batch=4 |" in b.text for b in built.blocks)


def offline_env(tmp_path: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("WANDB_")}
    return {**env, "NETRC": str(tmp_path / "none"), "PYTHONPATH": str(REPO)}  # no key, no netrc entry


def test_without_a_key_the_command_writes_the_spec_and_says_so_in_one_line(tmp_path):
    env = offline_env(tmp_path)
    cmd = [sys.executable, "-m", "launcher.dashboard", "logger.entity=acme", "logger.project=pcb"]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=tmp_path, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    [line] = proc.stdout.strip().splitlines()
    assert line.startswith("W&B dashboard: nothing created (W&B offline: no API key")
    assert "view 'yolo-ddp' in acme/pcb" in line and "--spec" in line
    spec = dashboard.read_spec(tmp_path / dashboard.SPEC_FILE)
    assert (spec["entity"], spec["project"], spec["swept"]) == ("acme", "pcb", ["train.batch", "data.imgsz"])

    # Applied later, with a project given on the command line winning over the file's.
    again = subprocess.run([sys.executable, "-m", "launcher.dashboard", "--spec", "dashboard.json",
                            "logger.project=other"], capture_output=True, text=True, env=env, cwd=tmp_path,
                           timeout=120)
    assert again.returncode == 0 and len(again.stdout.strip().splitlines()) == 1
    assert dashboard.read_spec(tmp_path / dashboard.SPEC_FILE)["project"] == "other"

    bad = subprocess.run([*cmd, "logger.entty=x"], capture_output=True, text=True, env=env, cwd=tmp_path,
                         timeout=120)
    assert bad.returncode == 2 and "logger.entty" in bad.stderr and "Traceback" not in bad.stderr


BLOCKER = '''
import sys

class _NotInstalled:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in ("wandb", "wandb_workspaces"):
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)
        return None

sys.meta_path.insert(0, _NotInstalled())
'''


def test_launcher_needs_neither_wandb_nor_wandb_workspaces(tmp_path):
    site = tmp_path / "site"
    site.mkdir()
    (site / "sitecustomize.py").write_text(BLOCKER)
    env = {**offline_env(tmp_path), "PYTHONPATH": f"{site}{os.pathsep}{REPO}"}
    code = ("import launcher.__main__, launcher.dashboard, launcher.sweep.summary, yolo_ddp.engine.train\n"
            "import sys\ntry:\n    import wandb_workspaces\nexcept ImportError:\n    print('blocked')\n"
            "print('wandb' in sys.modules)")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.split() == ["blocked", "False"]
    cli = subprocess.run([sys.executable, "-m", "launcher.dashboard", "logger.mode=online"], capture_output=True,
                         text=True, env=env, cwd=tmp_path, timeout=120)
    assert cli.returncode == 0, cli.stderr[-2000:]
    assert "nothing created (wandb is not installed: pip install -e '.[wandb]')" in cli.stdout
    assert (tmp_path / dashboard.SPEC_FILE).exists()


@pytest.mark.skipif(not os.environ.get("WANDB_API_KEY"),
                    reason="saving a view needs a W&B API key (WANDB_API_KEY); the offline path is tested above")
def test_online_view_is_saved_updated_in_place_and_loads_back_by_url(tmp_path):
    import wandb_workspaces.workspaces as ws

    from yolo_ddp.logging.dashboard import wandb_view

    project = os.environ.get("YOLO_DDP_TEST_PROJECT", "yolo-ddp-ci")
    spec = dashboard.view_spec(os.environ.get("WANDB_ENTITY", ""), project, ["train.batch"])
    first = wandb_view.save(spec)["view"]
    spec["swept"] = ["train.batch", "data.imgsz"]
    spec["sections"] = dashboard.view_spec(spec["entity"], project, spec["swept"])["sections"]
    second = wandb_view.save(spec)["view"]
    assert re.sub(r"&.*", "", first) == re.sub(r"&.*", "", second)  # updated in place: the same view
    loaded = ws.Workspace.from_url(second)
    assert loaded.name == dashboard.VIEW_NAME
    assert plotted(loaded).config == ["train.batch", "data.imgsz"]
    assert plotted(loaded).sections == plotted(build(spec)).sections


def test_a_refused_save_is_one_paragraph_and_a_job_falls_back_to_the_spec(monkeypatch, tmp_path):
    from yolo_ddp.config.run import LoggerConfig
    from yolo_ddp.logging import RunWriter
    from yolo_ddp.logging.dashboard import wandb_view

    def refuse(spec):
        raise RuntimeError("permission denied for project pcb")

    monkeypatch.setattr(wandb_view, "save", refuse)
    with pytest.raises(dashboard.DashboardError, match="acme/pcb: permission denied .*Check logger.entity"):
        dashboard.publish(dashboard.view_spec("acme", "pcb"), tmp_path, True, "online")
    monkeypatch.setattr(dashboard, "connection", lambda logger: (True, "W&B online"))
    RunWriter(tmp_path / "run", logger=LoggerConfig(name="wandb", dashboard=True, entity="acme")).close()
    assert dashboard.read_spec(tmp_path / "run" / dashboard.SPEC_FILE)["entity"] == "acme"  # training's end is kept


def test_standalone_axes_are_the_defaults_plus_an_optuna_search_space():
    pytest.importorskip("optuna", reason="hydra/sweeper=optuna needs the Optuna sweeper")
    from launcher.dashboard import load_config, sweep_axes

    assert sweep_axes(load_config([])) == ["train.batch", "data.imgsz"]
    axes = sweep_axes(load_config(["hydra/sweeper=optuna"]))
    assert axes[:2] == ["train.batch", "data.imgsz"] and {"train.lr0", "data.mosaic", "model"} <= set(axes)
    assert axes.count("data.imgsz") == 1  # in the search space too: one axis
    assert sweep_axes(load_config(["logger.sweep_keys=[train.lr0]"])) == ["train.lr0"]
