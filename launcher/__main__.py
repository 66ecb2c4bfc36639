"""Entry point: `python -m launcher ...` (spawns workers) or `torchrun ... -m launcher ...` (is a worker).

Composes the Hydra config, validates it against the typed schema, and either trains (under an elastic
agent: this process is one rank) or starts a DDP job of `launcher.nproc_per_node` workers. In a Hydra
multirun each sweep point becomes one full DDP job with its own run dir.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import sys
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf
from torch.distributed.elastic.multiprocessing.errors import ChildFailedError

from launcher.argv import normalize_argv, split_argv
from launcher.errors import exit_on_user_error
from launcher.job.names import register_resolvers, run_id
from launcher.recipe import apply_from_yolo
from launcher.store import refuse_missing_optuna, register_configs
from launcher.unknown_keys import refuse_unknown_keys
from yolo_ddp.config import Config
from yolo_ddp.data.source import resolve_data_yaml
from yolo_ddp.data.spec import load_data_spec
from yolo_ddp.dist import check_devices, get_rank, under_elastic_agent
from yolo_ddp.engine import resume
from yolo_ddp.engine.checkpoint import refuse_fresh_run_over
from yolo_ddp.plan import split_global_batch

log = logging.getLogger("launcher")


def to_config(cfg: DictConfig) -> Config:
    """The typed, validated config (runs every `__post_init__` check)."""
    missing = sorted(k for k in OmegaConf.missing_keys(cfg) if not k.startswith("hydra"))
    if missing:
        raise ValueError(
            f"Config key(s) {', '.join(missing)} must be set (marked ??? in conf/). Pass them on the command "
            f"line, e.g. {missing[0]}=..."
        )
    refuse_unknown_keys(cfg, Config)
    return OmegaConf.to_object(cfg)


def _job_label() -> str:
    hc = HydraConfig.get()
    overrides = " ".join(hc.overrides.task) or "(no overrides)"
    num = hc.job.get("num", None)
    return f"job #{num} [{overrides}]" if hc.mode.name == "MULTIRUN" else f"job [{overrides}]"


class JobFailed(RuntimeError):
    """A DDP job whose workers failed; its message names the job and where the logs are."""


def spawn_job(cfg: DictConfig) -> dict:
    from launcher.job.slurm import node_task
    from launcher.job.spawn import launch_job, resolve_nproc, write_config

    typed = to_config(cfg)  # fail here, in one process, before any worker starts
    task = node_task()
    if task:  # under submitit: one task per node; node count and rendezvous come from the allocation
        typed = dataclasses.replace(typed, launcher=task.launcher_config(typed.launcher))
    node = task.node if task else 0
    if typed.plan:
        from launcher.plan_only import describe_plan

        print(describe_plan(typed, resolve_nproc(typed.launcher.nproc_per_node)), flush=True)
        return {}
    run_dir = Path(typed.run_dir)
    sweep_point = HydraConfig.get().mode == RunMode.MULTIRUN and node == 0
    record: dict = {}
    if sweep_point:  # skip a completed point, resume a started one, keep the ladder off the swept keys
        from launcher.job.names import sweep_keys
        from launcher.sweep import points as sweep_points

        typed, record = sweep_points.prepare(typed, run_dir, list(HydraConfig.get().overrides.task), sweep_keys())
        if typed is None:
            return {"skipped": True}
    if node == 0:  # other nodes start later and would see node 0's files as another run's
        refuse_fresh_run_over(run_dir, typed.train.resume)  # before this process writes anything there
    resume.load(typed.train.resume, run_dir)  # a missing or unreadable checkpoint: exit 2, run dir as it was
    run_dir.mkdir(parents=True, exist_ok=True)
    per_node = "" if node == 0 else f".node{node}"  # nodes share the run dir; each writes its own files
    logging.basicConfig(level=logging.INFO, format="%(message)s", force=True,
                        handlers=[logging.StreamHandler(sys.stdout),
                                  logging.FileHandler(run_dir / f"launcher{per_node}.log")])
    # Input the parent can check fails here, once, instead of in every worker.
    if typed.data.path:
        load_data_spec(resolve_data_yaml(typed.data))
    nproc = resolve_nproc(typed.launcher.nproc_per_node)
    check_devices(typed.dist.backend, nproc)  # before any worker starts, not once per rank
    label = _job_label()
    try:  # refuse a batch that cannot split before any worker starts
        if typed.train.batch != "auto":
            split_global_batch(typed.train.batch, nproc * typed.launcher.nnodes)
    except ValueError as e:
        raise ValueError(f"{label}: {e}") from None
    if sweep_point:  # plan the point here: one that cannot fit is a row, not workers dying of OOM
        record.update(sweep_points.check_fits(typed, nproc))
        sweep_points.write_point(run_dir, record)
        if record.get("infeasible"):
            log.info(f"{label}: infeasible, needs {record['need_gib']} GiB per rank, has {record['have_gib']} GiB; "
                     f"no worker started")
            return {"infeasible": True}
    resolved = run_dir / f"resolved_config{per_node}.yaml"
    write_config(typed, resolved)
    log.info(f"{label}: {nproc} worker(s) per node x {typed.launcher.nnodes} node(s), run dir {run_dir}")
    try:
        launch_job(typed, resolved, nproc, run_id=task.run_id if task else f"{run_id()}-{run_dir.name}")
    except ChildFailedError as e:
        codes = ", ".join(f"rank {r}: exit {f.exitcode}" for r, f in sorted(e.failures.items()))
        raise JobFailed(f"{label} failed ({codes}). The ranks' messages are above; each rank's log is in "
                        f"{run_dir}/rank*.log.") from None
    if node != 0:  # rank 0, on node 0, writes result.json, maybe after this node's workers have exited
        return {}
    return json.loads((run_dir / "result.json").read_text())


@hydra.main(version_base="1.3", config_path="../conf", config_name="config")
def hydra_main(cfg: DictConfig) -> float | list[float] | None:
    if under_elastic_agent():  # torchrun started us: this process is one rank
        from yolo_ddp.engine.train import train

        result = exit_on_user_error(lambda: train(to_config(cfg)), rank=get_rank())
    elif HydraConfig.get().mode == RunMode.RUN:
        try:
            result = exit_on_user_error(lambda: spawn_job(cfg))
        except JobFailed as e:
            sys.stderr.write(f"error: {e}\n")
            raise SystemExit(1) from None
    else:  # multirun: raise, so Hydra runs the other sweep points and then fails naming this one
        result = spawn_job(cfg)
        objectives = HydraConfig.get().sweeper.get("objectives")
        if objectives:  # an Optuna search: best mAP50-95 (and img/s), NaN for an infeasible point
            from launcher.sweep.points import objective

            return objective(Path(HydraConfig.get().runtime.output_dir), list(objectives))
    return result.get("mAP50-95")  # what a sweeper optimises


def _refuse_multirun_under_torchrun(argv: list[str]) -> None:
    if under_elastic_agent() and any(a in ("-m", "--multirun") for a in argv[1:]):
        sys.stderr.write(
            "error: a Hydra multirun (-m) cannot run under torchrun: every rank would start its own sweep. "
            "Run the sweep without torchrun, `python -m launcher -m ...`, and each sweep point becomes a full "
            "DDP job with launcher.nproc_per_node workers.\n"
        )
        raise SystemExit(2)


def _cpu_profile(argv: list[str]) -> list[str]:
    """No GPU and no explicit train profile: the CPU-sized one (said first), else nothing."""
    import torch

    _, overrides = split_argv(argv[1:])
    if torch.cuda.is_available() or any(a.startswith(("train=", "+train=", "++train=")) for a in overrides):
        return []
    if any(a.startswith("hydra/launcher=") and "slurm" in a for a in overrides):  # GPUs are on the job's nodes
        return []
    if int(os.environ.get("RANK", 0)) == 0:
        print("No GPU found: using the CPU profile train=cpu_quick (pass train=default to override).", flush=True)
    return ["train=cpu_quick"]


def main() -> None:
    _refuse_multirun_under_torchrun(sys.argv)
    # Flags first, then overrides (ours last): Hydra's parser takes overrides on one side of the flags only.
    sys.argv[:] = normalize_argv(sys.argv, _cpu_profile(sys.argv))
    exit_on_user_error(lambda: refuse_missing_optuna(split_argv(sys.argv[1:])[1]))
    sys.argv[:] = exit_on_user_error(lambda: apply_from_yolo(sys.argv))  # train.from_yolo: the recipe, under ours
    if any(a in ("-m", "--multirun") for a in sys.argv[1:]):
        from launcher.job.names import export_sweep

        export_sweep(sys.argv)
    register_resolvers()
    register_configs()
    hydra_main()


if __name__ == "__main__":
    main()
