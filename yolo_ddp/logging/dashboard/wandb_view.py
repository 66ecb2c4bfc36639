"""A dashboard spec (yolo_ddp.logging.dashboard.spec) as wandb-workspaces objects, saved to W&B.

The view is a `wandb_workspaces.workspaces.Workspace`; an existing view of the same name in the project is
loaded by its URL and updated in place, so re-running keeps one view (and its URL). A sweep's report is a
`wandb_workspaces.reports.v2.Report`; its summary picture and table come from a small W&B run of the sweep's
group (job_type "sweep-summary"), since a report shows media that a run logged.
Imported only where a view is built: wandb and wandb-workspaces are the optional `wandb` extra.
"""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any

import wandb
import wandb_workspaces.reports.v2 as wr
import wandb_workspaces.workspaces as ws
from wandb_workspaces import expr
from wandb_workspaces._graphql import execute_graphql, get_app_url

SUMMARY_IMAGE = "sweep/summary"
SUMMARY_TABLE = "sweep/summary_table"


def _metric(ref: str | dict[str, str]) -> Any:
    """A history key as is; {"config": k} / {"summary": k} as the run config / summary value."""
    if isinstance(ref, str):
        return ref
    if "config" in ref:
        return wr.Config(ref["config"])
    return wr.SummaryMetric(ref["summary"])


def panel(p: dict[str, Any]) -> Any:
    kind = p["kind"]
    if kind == "line":
        return wr.LinePlot(title=p["title"], x=p["x"], y=list(p["y"]), metric_regex=p["regex"] or None)
    if kind == "table":
        return wr.WeavePanelSummaryTable(table_name=p["key"])
    if kind == "parallel":
        return wr.ParallelCoordinatesPlot(title=p["title"], columns=[
            wr.ParallelCoordinatesPlotColumn(metric=_metric(c)) for c in p["columns"]])
    if kind == "scatter":
        return wr.ScatterPlot(title=p["title"], x=_metric(p["x"]), y=_metric(p["y"]))
    raise ValueError(f"dashboard spec: unknown panel kind '{kind}' (line, table, parallel, scatter)")


def build_workspace(spec: dict[str, Any], entity: str = "") -> ws.Workspace:
    return ws.Workspace(
        entity=entity or spec["entity"] or "-", project=spec["project"], name=spec["view"],
        sections=[ws.Section(name=s["name"], panels=[panel(p) for p in s["panels"]], is_open=True)
                  for s in spec["sections"]],
        settings=ws.WorkspaceSettings(x_axis="Step", smoothing_type="none", max_runs=50),
        runset_settings=ws.RunsetSettings(groupby=[expr.Metric(spec["group_by"])],
                                          pinned_columns=[f"summary:{c['summary']}" for s in spec["sections"]
                                                          for p in s["panels"] if p["kind"] == "parallel"
                                                          for c in p["columns"] if "summary" in c]),
    )


def _view_url(entity: str, project: str, display_name: str) -> str | None:
    """The URL of the project's saved view called `display_name`, if there is one."""
    query = """
        query ProjectViews($entityName: String, $name: String) {
            project(name: $name, entityName: $entityName) {
                allViews(viewType: "project-view") { edges { node { name displayName } } }
            }
        }"""
    api = wandb.Api()
    project_node = execute_graphql(api, query, {"entityName": entity, "name": project}).get("project") or {}
    for edge in (project_node.get("allViews") or {}).get("edges", []):
        if edge["node"]["displayName"] == display_name:
            name = edge["node"]["name"].replace("nw-", "").replace("-v", "")
            return f"{get_app_url(api).rstrip('/')}/{entity}/{project}?nw={name}"
    return None


def save_view(spec: dict[str, Any], entity: str) -> str:
    fresh = build_workspace(spec, entity)
    url = _view_url(entity, spec["project"], spec["view"])
    if url is None:
        return fresh.save().url
    view = ws.Workspace.from_url(url)  # update in place: same view, same URL
    view.sections, view.settings, view.runset_settings = fresh.sections, fresh.settings, fresh.runset_settings
    return view.save().url


def _log_summary_run(report: dict[str, Any], entity: str, project: str) -> str:
    """A run of the sweep's group holding sweep_summary.png and the summary table; returns its id."""
    run = wandb.init(entity=entity, project=project, group=report["group"] or None, job_type="sweep-summary",
                     name="sweep summary", dir=report["sweep_dir"], settings=wandb.Settings(silent=True, console="off"))
    with open(report["summary_csv"], newline="") as f:
        rows = list(csv.reader(f))
    values = {SUMMARY_TABLE: wandb.Table(columns=rows[0], data=rows[1:])} if rows else {}
    if Path(report["summary_png"]).exists():
        values[SUMMARY_IMAGE] = wandb.Image(report["summary_png"], caption="sweep_summary.png")
    run.log(values)
    run.finish()
    return run.id


def _markdown_table(columns: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(columns) + " |", "|" + " --- |" * len(columns)]
    return "\n".join(lines + ["| " + " | ".join(r) + " |" for r in rows])


def build_report(report: dict[str, Any], entity: str, project: str, summary_run_id: str) -> wr.Report:
    best = report["best"]
    blocks: list[Any] = [
        wr.P(f"yolo-ddp sweep in {report['sweep_dir']}: one row per job (sweep_summary.csv)."),
        wr.MarkdownBlock(_markdown_table(report["columns"], report["rows"])),
        wr.PanelGrid(runsets=[wr.Runset(entity=entity, project=project, name="sweep summary",
                                        filters=f"ID = '{summary_run_id}'")],
                     panels=[wr.MediaBrowser(title="sweep_summary.png", media_keys=[SUMMARY_IMAGE]),
                             wr.WeavePanelSummaryTable(table_name=SUMMARY_TABLE)]),
    ]
    if best:
        blocks += [wr.H2(f"Best point: job #{best['job']} {best['params']} ({best['objective']})"),
                   wr.MarkdownBlock(f"```\n{best['command']}\n```")]
        if best["run_id"]:
            blocks.append(wr.PanelGrid(
                runsets=[wr.Runset(entity=entity, project=project, name=best["name"], filters=f"ID = '{best['run_id']}'")],
                panels=[wr.LinePlot(title=k, y=[k]) for k in report["best_curves"]]))
    return wr.Report(entity=entity, project=project, title=report["title"][:128],
                     description="Summary, picture and the best point's curves of a yolo-ddp sweep.", blocks=blocks)


def save(spec: dict[str, Any]) -> dict[str, str]:
    """Save the view, and the sweep report when the spec has one; returns their URLs."""
    entity = spec["entity"] or wandb.Api().default_entity
    urls = {"view": save_view(spec, entity)}
    if spec.get("report"):
        run_id = _log_summary_run(spec["report"], entity, spec["project"])
        urls["report"] = build_report(spec["report"], entity, spec["project"], run_id).save().url
    return urls
