"""`python -m launcher.dashboard logger.entity=TEAM logger.project=PROJECT`: the team's saved W&B view.

Creates the project's saved view "yolo-ddp" (accuracy, losses, throughput and scaling, memory, sweeps), or
updates it in place. The overrides are the launcher's (the same conf/ and schema): `logger.sweep_keys=[...]`
sets the sweep panel's axes, else `train.batch`, `data.imgsz` and the keys of an Optuna search space given
with `hydra/sweeper=optuna`. Without an API key (or offline, or without wandb-workspaces) nothing is created:
it says what it would create and writes dashboard.json into the working directory, exit 0.
`--spec PATH` applies such a file (or one a job or sweep wrote with logger.dashboard=true). `--picture DIR`
also draws the view from the runs under DIR (a run dir, a sweep dir, outputs/) as dashboard.png, locally.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from hydra import compose, initialize_config_dir
from hydra.errors import HydraException
from omegaconf import DictConfig, OmegaConf

from launcher.errors import exit_on_user_error
from launcher.job.names import register_resolvers
from launcher.store import register_configs
from yolo_ddp.logging import dashboard

CONF = Path(__file__).resolve().parent.parent / "conf"


def parse_args(argv: list[str]) -> tuple[argparse.Namespace, list[str]]:
    p = argparse.ArgumentParser(prog="python -m launcher.dashboard", description=__doc__.splitlines()[0],
                                epilog="Other arguments are config overrides, e.g. logger.entity=TEAM logger.project=P.")
    p.add_argument("--spec", type=Path, help=f"apply this {dashboard.SPEC_FILE} instead of building the view")
    p.add_argument("--picture", type=Path, metavar="DIR",
                   help="also draw the view from the runs under DIR as dashboard.png (next to the spec)")
    return p.parse_known_args(argv)


def load_config(overrides: list[str]) -> DictConfig:
    register_resolvers()
    register_configs()
    try:
        with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
            return compose(config_name="config", overrides=overrides, return_hydra_config=True)
    except HydraException as e:
        detail = " ".join(str(e).split()).rstrip(".")
        raise ValueError(f"{' '.join(overrides) or '(no overrides)'}: {detail}. The overrides are the launcher's "
                         f"config keys (conf/, README table), e.g. logger.entity=TEAM logger.project=PROJECT.") from None


def sweep_axes(cfg: DictConfig) -> list[str]:
    """logger.sweep_keys when set, else train.batch, data.imgsz and an Optuna search space's keys."""
    if cfg.logger.get("sweep_keys"):
        return list(cfg.logger.sweep_keys)
    params = OmegaConf.select(cfg, "hydra.sweeper.params") or {}
    return list(dict.fromkeys([*dashboard.DEFAULT_AXES, *(str(k) for k in params)]))


def build(args: argparse.Namespace, overrides: list[str]) -> tuple[dict, Path, DictConfig]:
    cfg = load_config(overrides)
    if args.spec is None:
        return dashboard.view_spec(cfg.logger.entity, cfg.logger.project, sweep_axes(cfg)), Path.cwd(), cfg
    spec = dashboard.read_spec(args.spec)
    for key in ("entity", "project"):  # given on the command line: wins over the file
        if any(o.split("=", 1)[0].lstrip("+") == f"logger.{key}" for o in overrides):
            spec[key] = cfg.logger[key]
    return spec, args.spec.parent, cfg


def main(argv: list[str] | None = None) -> int:
    args, overrides = parse_args(sys.argv[1:] if argv is None else argv)
    spec, out_dir, cfg = exit_on_user_error(lambda: build(args, overrides))
    online, why = dashboard.connection(cfg.logger)
    try:
        print(dashboard.publish(spec, out_dir, online, why), flush=True)
    except dashboard.DashboardError as e:
        sys.stderr.write(f"error: {e}\n")
        return 1
    if args.picture is not None:
        print(exit_on_user_error(lambda: draw_picture(spec, args.picture, out_dir)), flush=True)
    return 0


def draw_picture(spec: dict, root: Path, out_dir: Path) -> str:
    from yolo_ddp.logging.dashboard import picture

    runs = picture.find_runs(root)
    if not runs:
        raise FileNotFoundError(f"--picture {root}: no run dirs there (none has a metrics.csv); pass a run dir, a "
                                f"sweep dir or outputs/.")
    path = picture.draw(spec, runs, out_dir / picture.PICTURE_FILE)
    return f"Picture of the view with the {len(runs)} run(s) under {root}: {path}"


if __name__ == "__main__":
    sys.exit(main())
