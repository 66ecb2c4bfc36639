"""What `train.resume` points at, and whether a checkpoint's run plan can go on in this job.

- `train.resume=true`: the run dir's own `last.pt` (`hydra.run.dir=<run dir>`).
- `train.resume=PATH`, a `last.pt` or the run dir holding it: that run continues in its own dir. The
  launcher's config points `hydra.run.dir` there (`run_dir_for`, conf/config.yaml), so logs, metrics and
  checkpoints of one run stay together; naming another run dir as well is refused.
- An elastic restart continues the run dir's latest `last.pt` whatever `train.resume` says.

Only a file the user named (or the run dir's own last.pt) is ever loaded, with `weights_only=True`.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from yolo_ddp.engine import checkpoint
from yolo_ddp.engine.checkpoint import CheckpointError
from yolo_ddp.plan import RunPlan
from yolo_ddp.schedule import StepSchedule

# What the step counter, LR schedule and data order depend on; the world size may change around them.
KEPT_PLAN = ("global_batch", "accumulate", "loader_batches_per_epoch", "steps_per_epoch")


def _named(resume: str) -> Path:
    return Path(os.path.abspath(Path(resume).expanduser()))


def run_dir_for(resume: Any, default: str) -> str:
    """Hydra's run dir: the named checkpoint's dir when `train.resume` is an existing path, else `default`.

    A path that does not exist keeps the default, so a typo creates no dir beside it; `checkpoint_path`
    then names it.
    """
    if not isinstance(resume, str) or not resume:
        return default
    p = _named(resume)
    return str(p if p.is_dir() else p.parent) if p.exists() else default


def checkpoint_path(resume: Any, run_dir: Path) -> Path | None:
    """The training state to continue from, or None for a fresh run; raises on a path that cannot be used."""
    last = run_dir / "last.pt"
    if checkpoint.continues_elastic_run(run_dir) and last.exists():
        return last  # an elastic restart continues its own latest state
    if not resume:
        return None
    if resume is True:
        if not last.exists():
            raise CheckpointError(
                f"train.resume=true but {last} does not exist. Resume continues a run in its own dir: pass "
                f"hydra.run.dir=<that run's dir> (for example outputs/2026-01-31/12-00-00) or "
                f"train.resume=<path to its last.pt>, or drop train.resume."
            )
        return last
    named = _named(resume)
    ckpt = named / "last.pt" if named.is_dir() else named
    if not ckpt.is_file():
        raise CheckpointError(
            f"Config key 'train.resume': {ckpt} does not exist. Pass the path of a yolo-ddp last.pt or of the run "
            f"dir holding it, or drop train.resume to start a fresh run."
        )
    if ckpt.parent.resolve() != run_dir.resolve():
        raise CheckpointError(
            f"Config key 'train.resume': {ckpt} belongs to run dir {ckpt.parent}, but this run's dir is {run_dir}. "
            f"A resumed run continues in its checkpoint's dir: drop hydra.run.dir=... (it follows train.resume), "
            f"or copy the checkpoint into the other dir as last.pt and pass train.resume=true there."
        )
    if ckpt != last and last.exists():
        raise CheckpointError(
            f"Config key 'train.resume': resuming from {ckpt.name} would overwrite the newer {last}. Resume "
            f"from last.pt (train.resume={ckpt.parent}), or copy {ckpt.name} into a new dir as last.pt and resume "
            f"there; nothing was changed."
        )
    return ckpt


def load(resume: Any, run_dir: Path) -> tuple[Path, dict[str, Any]] | None:
    """Path and contents of the checkpoint to continue from; before anything is written to the run dir."""
    path = checkpoint_path(resume, run_dir)
    return (path, checkpoint.load_train_state(path)) if path else None


def check_plan(saved: dict[str, Any], plan: RunPlan, path: Path, epoch: int = 0, step: int | None = None) -> str | None:
    """Refuse a plan the checkpoint's counters cannot continue; describe a world-size change that keeps it.

    A different world size is fine while the global batch, accumulation and steps per epoch stay: each
    optimizer step then sees the same images in the same order, only split over more or fewer ranks.
    """
    changed = [f"{k} {saved.get(k)} -> {getattr(plan, k)}" for k in KEPT_PLAN if saved.get(k) != getattr(plan, k)]
    if changed:
        raise CheckpointError(
            f"{path} was trained on {saved.get('world_size')} rank(s) with global batch {saved.get('global_batch')}, "
            f"accumulate {saved.get('accumulate')} and {saved.get('steps_per_epoch')} steps per epoch; this job on "
            f"{plan.world_size} rank(s) would change {', '.join(changed)}, so its step count and LR schedule would "
            f"no longer match. Pass train.batch={saved.get('global_batch')} (it must split evenly over the ranks) "
            f"with the same train.nbs and data, or start a new run without train.resume; nothing was changed."
        )
    _check_schedule(saved, plan, path, epoch)
    if step is not None and step < plan.schedule.first_step(epoch):
        raise CheckpointError(
            f"{path} ended inside epoch {epoch} (optimizer step {step}) when its train.time budget ran out, so that "
            f"run is finished and its epochs cannot continue where they left off. Start a new run from its weights "
            f"with model.weights={path.parent / 'best.pt'}; nothing was changed."
        )
    if saved.get("world_size") != plan.world_size:
        return (f"world size changed on resume: {saved.get('world_size')} -> {plan.world_size} ranks, per-rank batch "
                f"{saved.get('batch_per_rank')} -> {plan.batch_per_rank}; global batch {plan.global_batch}, "
                f"accumulation and steps per epoch unchanged")
    return None


def _check_schedule(saved: dict[str, Any], plan: RunPlan, path: Path, epoch: int) -> None:
    """More epochs (or another warmup) may continue a run only while the epoch being resumed keeps its steps: the
    warmup ramps accumulation, so it decides which optimizer step starts each epoch."""
    old = StepSchedule(saved["loader_batches_per_epoch"], saved["accumulate"], saved["warmup_batches"], saved["epochs"])
    new = plan.schedule
    if (old.first_step(epoch), old.steps_in_epoch(epoch)) != (new.first_step(epoch), new.steps_in_epoch(epoch)):
        raise CheckpointError(
            f"{path} holds {epoch} finished epoch(s) of a {saved['epochs']}-epoch run with {old.warmup_batches} "
            f"warmup batches; this job's train.epochs={plan.epochs} and train.warmup_epochs give {plan.warmup_batches}, "
            f"which would move its optimizer steps (warmup ramps accumulation, and Ultralytics caps warmup at "
            f"epochs - 1). Resume with the run's train.epochs={saved['epochs']} and its train.warmup_epochs, or "
            f"start a new run with model.weights set to this run's best.pt; nothing was changed."
        )
