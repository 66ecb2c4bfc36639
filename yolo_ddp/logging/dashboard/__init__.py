"""The team's W&B dashboard: `spec` describes the saved view (and a sweep's report) as data, `wandb_view` saves
it with wandb-workspaces (the optional wandb extra, imported only to save), `picture` draws it from run files."""

from __future__ import annotations

from yolo_ddp.logging.dashboard.spec import (
    DEFAULT_AXES,
    REPORT_URL_FILE,
    SPEC_FILE,
    VIEW_NAME,
    DashboardError,
    connection,
    describe,
    publish,
    read_spec,
    sweep_axes,
    sweep_report_spec,
    view_spec,
    write_spec,
)

__all__ = ["DEFAULT_AXES", "REPORT_URL_FILE", "SPEC_FILE", "VIEW_NAME", "DashboardError", "connection", "describe",
           "publish", "read_spec", "sweep_axes", "sweep_report_spec", "view_spec", "write_spec"]
