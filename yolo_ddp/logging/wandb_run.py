"""The job's one W&B run, owned by rank 0: created here, logged to by `RunWriter`, finished at the end.

Offline (synced later with `wandb sync`) when no API key is configured; the run id is kept in the run dir,
so a resumed run, or an elastic restart, continues the same W&B run. No API key is ever put in the run's
config: values that contain one are replaced before they reach W&B.
"""

from __future__ import annotations

import logging
import netrc
import os
import secrets as random_source
import string
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

log = logging.getLogger("yolo_ddp.logging")
RUN_ID_FILE = "wandb_run_id.txt"
REDACTED = "<redacted>"


def wandb_importable() -> bool:
    try:
        import wandb  # noqa: F401
    except ImportError:
        return False
    return True


def api_key_configured() -> bool:
    """WANDB_API_KEY, or a `wandb login` entry in ~/.netrc for the W&B host."""
    if os.environ.get("WANDB_API_KEY"):
        return True
    host = urlparse(os.environ.get("WANDB_BASE_URL", "https://api.wandb.ai")).hostname or "api.wandb.ai"
    try:
        return netrc.netrc(os.environ.get("NETRC")).authenticators(host) is not None
    except (OSError, netrc.NetrcParseError):
        return False


def resolve_mode(mode: str) -> tuple[str, str]:
    """(mode, why): logger.mode wins, then WANDB_MODE, then online exactly when a key is configured."""
    if mode != "auto":
        return mode, f"logger.mode={mode}"
    env = os.environ.get("WANDB_MODE", "")
    if env:
        return ("disabled" if env == "dryrun" else env), f"WANDB_MODE={env}"
    if api_key_configured():
        return "online", "an API key is configured"
    return "offline", "no API key is configured (set WANDB_API_KEY or run `wandb login`)"


def redact(value: Any, secrets: list[str]) -> Any:
    """`value` with every string that contains a secret replaced (a key pasted into a config value)."""
    if isinstance(value, dict):
        return {k: redact(v, secrets) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [redact(v, secrets) for v in value]
    if isinstance(value, str) and any(s in value for s in secrets):
        return REDACTED
    return value


def secrets() -> list[str]:
    return [v for k, v in os.environ.items() if k in ("WANDB_API_KEY", "WANDB_IDENTITY_TOKEN_FILE") and v]


def new_run_id() -> str:
    """Eight lowercase letters and digits, W&B's own id format (wandb 0.31 no longer exports its generator)."""
    return "".join(random_source.choice(string.ascii_lowercase + string.digits) for _ in range(8))


class WandbRun:
    def __init__(self, run_dir: Path, cfg: Any, config: dict[str, Any], default_name: str):
        """`cfg` is the LoggerConfig, `config` the resolved run config (the W&B run config)."""
        import wandb

        self.wandb, self.cfg, self.run_dir = wandb, cfg, run_dir
        mode, why = resolve_mode(cfg.mode)
        self.mode, self.why = mode, why
        id_file = run_dir / RUN_ID_FILE
        run_id = id_file.read_text().strip() if id_file.exists() else new_run_id()
        self.run = wandb.init(
            project=cfg.project, entity=cfg.entity or None, group=cfg.group or None, name=cfg.run_name or default_name,
            tags=list(cfg.tags) or None, job_type="train", config=redact(config, secrets()), dir=str(run_dir),
            id=run_id, resume="allow", mode=mode,
            # Quiet: this module says what matters once; rank logs already hold the console output.
            settings=wandb.Settings(silent=True, console="off"),
        )
        id_file.write_text(run_id)
        # Where the run went (online, the key's default entity fills an empty logger.entity), read while it is live.
        self.entity, self.project = (self.run.entity or cfg.entity, self.run.project or cfg.project) \
            if mode == "online" else (cfg.entity, cfg.project)
        where = f"{self.run.dir.rsplit('/files', 1)[0]}" if mode == "offline" else getattr(self.run, "url", "")
        log.info(f"W&B run {run_id} ({mode}: {why}) -> {where}"
                 + (f"; upload later with `wandb sync {where}`" if mode == "offline" else ""))

    def run_info(self, info: dict[str, Any]) -> None:
        self.run.config.update(redact(info, secrets()), allow_val_change=True)

    def log(self, step: int, values: dict[str, Any]) -> None:
        self.run.log(values, step=step)

    def table(self, columns: list[str], rows: list[list[Any]]) -> Any:
        return self.wandb.Table(columns=columns, data=rows)

    def image(self, pixels: Any, boxes: dict, caption: str) -> Any:
        return self.wandb.Image(pixels, boxes=boxes, caption=caption)

    def summary(self, values: dict[str, Any]) -> None:
        self.run.summary.update(values)

    def finish(self) -> None:
        if self.cfg.log_model:
            files = [p for p in (self.run_dir / "best.pt", self.run_dir / "last.pt") if p.exists()]
            if files:
                artifact = self.wandb.Artifact(f"model-{self.run.id}", type="model")
                for path in files:
                    artifact.add_file(str(path))
                self.run.log_artifact(artifact, aliases=["latest", *(p.stem for p in files)])
        self.run.finish()
