"""The team's W&B dashboard as data: the saved view "yolo-ddp" (and a sweep's report) described as a plain dict.

`view_spec` says which keys each panel plots, using the names the writer logs under (yolo_ddp.logging.keys);
`yolo_ddp.logging.dashboard.wandb_view` turns the dict into wandb-workspaces objects and saves them. Without a key, or
without wandb-workspaces, nothing is created: `publish` writes the dict as dashboard.json, which
`python -m launcher.dashboard --spec dashboard.json` applies later. This module needs neither wandb nor
wandb-workspaces.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from yolo_ddp.logging import keys
from yolo_ddp.logging.wandb_run import resolve_mode, wandb_importable

VIEW_NAME = "yolo-ddp"
SPEC_FILE = "dashboard.json"
REPORT_URL_FILE = "sweep_report.txt"
# The sweep panel's axes when no sweep names its own (the standalone command): what the team sweeps most.
DEFAULT_AXES = ("train.batch", "data.imgsz")
# Config groups a sweep may choose (`model: choice(yolov8n, yolov8s)`): the run config holds the group's
# dict, so the axis is the leaf that names the choice.
GROUP_AXES = {"model": "model.cfg", "data": "data.name"}
PANEL_KINDS = ("line", "table", "parallel", "scatter")


class DashboardError(RuntimeError):
    """Saving to W&B failed (permissions, a wrong entity or project, the network)."""


def line(title: str, y: list[str] | None = None, regex: str = "", x: str = "Step") -> dict[str, Any]:
    """A line plot of history keys `y`, or of every key matching `regex`, against `x` (a history key or Step)."""
    return {"kind": "line", "title": title, "x": x, "y": list(y or []), "regex": regex}


def sweep_axes(swept: list[str] | tuple[str, ...]) -> list[str]:
    """Config keys for the parallel-coordinates axes: the swept keys, a config group as its naming leaf."""
    axes = [GROUP_AXES.get(k.lstrip("+~"), k.lstrip("+~")) for k in swept]
    return list(dict.fromkeys(axes))


def view_spec(entity: str, project: str, swept: list[str] | tuple[str, ...] = DEFAULT_AXES) -> dict[str, Any]:
    """The saved view: five sections, runs grouped by W&B group (a sweep's jobs share one) and coloured by run."""
    per_rank_mem = rf"{keys.rank_key_regex('peak_mem_gib')}|{keys.step_key(keys.PLAN_NEED)}"
    mean_map = keys.epoch_key("mAP50-95")
    sections = [
        {"name": "Accuracy", "panels": [
            line("mAP50-95 and mAP50 per epoch", [mean_map, keys.epoch_key("mAP50")], x=keys.epoch_key("epoch")),
            {"kind": "table", "title": "AP50-95 per class (last validation)", "key": keys.PER_CLASS_AP},
        ]},
        {"name": "Losses", "panels": [
            *(line(f"{name} (mean over ranks)", [keys.step_key(name)]) for name in ("box_loss", "cls_loss", "dfl_loss")),
            line("learning rate", [keys.step_key("lr")]),
        ]},
        {"name": "Throughput and scaling", "panels": [
            line("img/s, all ranks", [keys.step_key("img_per_s")]),
            line("img/s per rank", regex=keys.rank_key_regex("img_per_s")),
            line("data wait per step, slowest rank (ms)", [keys.step_key("data_wait_ms")]),
            line("data wait per step, per rank (ms)", regex=keys.rank_key_regex("data_wait_ms")),
            line("step time, slowest rank (ms)", [keys.step_key("step_ms")]),
            line("AMP loss scale", [keys.step_key("amp_scale")]),
        ]},
        {"name": "Memory", "panels": [
            line("peak memory per rank vs the planner's need (GiB)", regex=per_rank_mem),
            line("peak memory, largest rank vs the planner's need (GiB)",
                 [keys.step_key("peak_mem_gib"), keys.step_key(keys.PLAN_NEED)]),
        ]},
        {"name": "Sweeps", "panels": [
            {"kind": "parallel", "title": f"swept keys -> {keys.BEST_MAP}",
             "columns": [{"config": k} for k in sweep_axes(swept)] + [{"summary": keys.BEST_MAP}]},
            {"kind": "scatter", "title": "img/s vs mAP50-95 (one point per run)",
             "x": {"summary": keys.BEST_IMG_PER_S}, "y": {"summary": keys.BEST_MAP}},
        ]},
    ]
    return {"view": VIEW_NAME, "entity": entity, "project": project, "group_by": "Group", "swept": list(swept),
            "sections": sections}


def sweep_report_spec(sweep_dir: Path, group: str, rows: list[dict[str, Any]], best: dict[str, Any] | None,
                      summary_csv: Path, summary_png: Path) -> dict[str, Any]:
    """What a sweep's W&B Report holds: the summary table, sweep_summary.png and the best point's curves."""
    run_id_file = Path(best["run_dir"]) / "wandb_run_id.txt" if best else None
    columns = ("job", "name", "status", "world_size", "batch_per_rank", "imgsz", "img_per_s", "peak_mem_gib",
               "best_mAP50-95")
    return {
        "title": f"yolo-ddp {group or 'sweep ' + sweep_dir.name}",
        "group": group, "sweep_dir": str(sweep_dir),
        "summary_csv": str(summary_csv), "summary_png": str(summary_png),
        "columns": list(columns), "rows": [[str(r.get(c, "")) for c in columns] for r in rows],
        "best": None if best is None else {
            "job": best["job"], "name": best["name"], "params": best["params"],
            "run_id": run_id_file.read_text().strip() if run_id_file and run_id_file.exists() else "",
            "objective": best["objective"], "command": best["command"]},
        "best_curves": [keys.epoch_key("mAP50-95"), keys.epoch_key("mAP50"),
                        *(keys.step_key(n) for n in ("box_loss", "cls_loss", "dfl_loss"))],
    }


def n_panels(spec: dict[str, Any]) -> int:
    return sum(len(s["panels"]) for s in spec["sections"])


def describe(spec: dict[str, Any]) -> str:
    where = f"{spec['entity'] or '<your default entity>'}/{spec['project']}"
    what = (f"view '{spec['view']}' in {where} ({n_panels(spec)} panels: "
            f"{', '.join(s['name'] for s in spec['sections'])}; sweep axes {', '.join(spec['swept']) or 'none'})")
    if spec.get("report"):
        what += f" and the report '{spec['report']['title']}'"
    return what


def write_spec(spec: dict[str, Any], out_dir: Path) -> Path:
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / SPEC_FILE
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(spec, indent=2))
    tmp.replace(path)  # a spec is whole or absent
    return path


def read_spec(path: Path) -> dict[str, Any]:
    try:
        spec = json.loads(path.read_text())
    except FileNotFoundError:
        raise FileNotFoundError(f"{path}: no such dashboard spec. It is written as {SPEC_FILE} by "
                                f"`python -m launcher.dashboard` without a W&B key, or at the end of a job with "
                                f"logger.dashboard=true; pass that file's path.") from None
    except json.JSONDecodeError as e:
        raise ValueError(f"{path} line {e.lineno}: not valid JSON ({e.msg}); write it again with "
                         f"`python -m launcher.dashboard` (without a key it writes {SPEC_FILE}).") from None
    missing = [k for k in ("view", "entity", "project", "sections", "swept") if k not in spec]
    if missing:
        raise ValueError(f"{path}: not a yolo-ddp dashboard spec (no {', '.join(missing)}); write it again with "
                         f"`python -m launcher.dashboard`.")
    for section in spec["sections"]:
        for panel in section.get("panels", []):
            if panel.get("kind") not in PANEL_KINDS:
                raise ValueError(f"{path}: section '{section.get('name')}' has a panel of kind '{panel.get('kind')}'; "
                                 f"the kinds are {', '.join(PANEL_KINDS)}. Fix it or write the spec again with "
                                 f"`python -m launcher.dashboard`.")
    return spec


def connection(logger: Any) -> tuple[bool, str]:
    """(online, why) for the LoggerConfig `logger`: online exactly when its W&B run would be."""
    if logger.name in ("csv", "none"):
        return False, f"logger={logger.name}"
    if not wandb_importable():
        return False, "wandb is not installed: pip install -e '.[wandb]'"
    mode, why = resolve_mode(logger.mode)
    return mode == "online", f"W&B {mode}: {why}"


def publish(spec: dict[str, Any], out_dir: Path, online: bool, why: str) -> str:
    """Save the view (and report) when `online`, else write dashboard.json into `out_dir`; returns one line.

    `why` says why this is online or not (yolo_ddp.logging.wandb_run.resolve_mode). Online failures raise
    DashboardError; the caller decides whether that ends a command or only warns at the end of a job.
    """
    if online:
        try:
            from yolo_ddp.logging.dashboard import wandb_view
        except ImportError as e:
            why = f"{e.name or 'wandb-workspaces'} is not installed: pip install -e '.[wandb]'"
        else:
            try:
                urls = wandb_view.save(spec)
            except Exception as e:  # noqa: BLE001 - W&B's own errors, requests', ValueError for a wrong project
                raise DashboardError(
                    f"W&B refused the dashboard for {spec['entity'] or '<default entity>'}/{spec['project']}: {e}. "
                    f"Check logger.entity and logger.project (the key's user must be able to write there) and the "
                    f"network.") from e
            if spec.get("report") and urls.get("report"):
                (Path(spec["report"]["sweep_dir"]) / REPORT_URL_FILE).write_text(urls["report"] + "\n")
            return "; ".join(f"W&B {k} saved: {u}" for k, u in urls.items())
    path = write_spec(spec, out_dir)
    return (f"W&B dashboard: nothing created ({why}); it would be the {describe(spec)}. Spec written to {path}; "
            f"apply it where a key is set with `python -m launcher.dashboard --spec {path}`.")
