"""`train(cfg)`: build everything from the config, run the epochs, return the final metrics.

Order per epoch: train → validate (EMA weights) → checkpoint (rank 0, atomic) → writers.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import signal
import time
from copy import deepcopy
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

import torch
from ultralytics.utils.torch_utils import EarlyStopping, ModelEMA, init_seeds

from yolo_ddp import dist
from yolo_ddp.config import Config
from yolo_ddp.config.from_yolo import translate
from yolo_ddp.data import balance, image_cache
from yolo_ddp.data import select as selection
from yolo_ddp.data.dataset import build_index
from yolo_ddp.data.loaders import build_train_stream, resolve_backend, set_mosaic_until
from yolo_ddp.data.source import resolve_data_yaml
from yolo_ddp.data.spec import load_data_spec
from yolo_ddp.data.tiles.index import tile_index
from yolo_ddp.engine import checkpoint, resume, speed
from yolo_ddp.engine.evaluate import EvalResult, make_scorer, make_validation
from yolo_ddp.engine.faults import StopRequested, StopSignal, after_step_hook, stop_on_signals
from yolo_ddp.engine.heartbeat import Heartbeat, explain_timeout, is_collective_timeout
from yolo_ddp.engine.loop import LOSS_NAMES, StepContext, TrainState, train_one_epoch
from yolo_ddp.engine.loss_norm import LossNormaliser
from yolo_ddp.engine.model import (
    build_model,
    class_weights,
    freeze_layers,
    loss_criterion,
    set_criterion_epoch,
)
from yolo_ddp.engine.optim import (
    auto_iterations,
    build_optimizer,
    build_scheduler,
    choose_optimizer,
    rebuild_scheduler,
)
from yolo_ddp.engine.sync_bn import convert_sync_batchnorm, revert_sync_batchnorm
from yolo_ddp.logging import ValPreview, collect_run_info, make_writer, setup_rank_logging
from yolo_ddp.memory import run as memory
from yolo_ddp.memory.dali_buffers import typical_source_pixels
from yolo_ddp.memory.oom import HINT_FILE, OOMGuard, read_split_hint
from yolo_ddp.plan import agree_amp_mode, make_plan, time_budget_epochs
from yolo_ddp.sync import ddp as sync
from yolo_ddp.topology import NodeTopology
from yolo_ddp.topology.affinity import cpus_per_rank

log = logging.getLogger("yolo_ddp.engine.train")
AMP_DTYPES = {"off": None, "fp16": torch.float16, "bf16": torch.bfloat16}


def train(cfg: Config) -> dict[str, Any]:
    run_dir = Path(cfg.run_dir)
    setup_rank_logging(run_dir, dist.get_rank())
    node = sync.prepare_node(cfg.dist.backend)  # probe once per node; NCCL reads its env when the group starts
    device = dist.init_process_group(cfg.dist.timeout_s, cfg.dist.backend)
    heartbeat = Heartbeat()
    heartbeat.watch(cfg.dist.timeout_s, str(run_dir))  # names a stalled rank even while this one waits in CUDA
    try:
        with stop_on_signals() as stop:
            return _train(cfg, run_dir, device, node, stop, heartbeat)
    except Exception as e:
        if is_collective_timeout(e):  # name the rank that went quiet, not just "timed out"
            message = explain_timeout(e, heartbeat, cfg.dist.timeout_s, str(run_dir))
            log.error(message)  # now: tearing down NCCL below may block until its watchdog ends the process
            raise CollectiveTimeout(message) from e
        raise
    finally:
        heartbeat.close()
        dist.destroy_process_group()


class CollectiveTimeout(RuntimeError):
    """A peer stopped participating; the message says which rank and where its log is."""


def _set_threads(cfg: Config, device: torch.device) -> None:
    if device.type == "cpu":
        local_world = int(os.environ.get("LOCAL_WORLD_SIZE", 1))
        torch.set_num_threads(cfg.train.threads_per_rank or cpus_per_rank(local_world))


def _train(cfg: Config, run_dir: Path, device: torch.device, node: NodeTopology, stop: StopSignal,
           heartbeat: Heartbeat) -> dict[str, Any]:
    rank, world = dist.get_rank(), dist.get_world_size()
    checkpoint.refuse_fresh_run_over(run_dir, cfg.train.resume)
    saved = resume.load(cfg.train.resume, run_dir)  # before any write: an unusable checkpoint changes nothing
    writer = make_writer(rank, run_dir, cfg.logger, asdict(cfg))  # rank 0 opens the job's one W&B run
    _set_threads(cfg, device)
    speed.configure_backends(cfg.train, device)
    # Ultralytics' init_seeds: per-rank Python/NumPy streams (seed + 1 + rank, as its trainer) and, with
    # train.deterministic, deterministic algorithms; then one torch seed for an identical init on every rank.
    init_seeds(cfg.train.seed + 1 + rank, deterministic=cfg.train.deterministic)
    torch.manual_seed(cfg.train.seed)  # identical init everywhere; DDP also broadcasts rank 0's weights

    spec = load_data_spec(resolve_data_yaml(cfg.data))
    cache_dir = Path(cfg.data.cache_dir).expanduser()
    names = selection.class_names(cfg.data, spec.names)  # {0: "item"} under data.single_cls
    indexes = {}
    for split, sources in (("train", spec.train), ("val", spec.val)):
        full = build_index(sources, spec.nc, cache_dir / "index", split)
        indexes[split] = selection.select(full, cfg.data, split)  # data.fraction, data.classes, data.single_cls
        if note := selection.describe(cfg.data, len(full), len(indexes[split]), split):
            writer.info(note)
    if cfg.data.tile:  # training on overlapping windows of large images; validation still on whole images
        indexes["train"], tiling = tile_index(indexes["train"], cfg.data.tile, cfg.data.tile_overlap,
                                              cfg.data.tile_min_visible)
        writer.info(tiling.describe(cfg.data.tile, cfg.data.tile_overlap, cfg.data.tile_min_visible))
    train_index, val_index = indexes["train"], indexes["val"]

    amp = agree_amp_mode(cfg.train.amp, device)
    backend = resolve_backend(cfg.data, device)
    cfg = _resumed_batch(cfg, saved)
    # data.cache: refused before the probe when it cannot fit; a ram store still to be written is counted against
    # the host memory the plan may use. Built at the imgsz the plan chose; square validation reads the files.
    cached = {"train": train_index, **({"val": val_index} if cfg.data.val_rect else {})} if cfg.data.cache else {}
    pending = image_cache.pending_bytes(cached, cfg.data.imgsz, cfg.data.cache, cache_dir)
    memory_plan = memory.plan_for_run(cfg, names, device, world, amp, build_model, backend,
                                      source_pixels=typical_source_pixels(train_index.shapes),
                                      host_reserved=pending if cfg.data.cache == "ram" else 0)
    cfg, amp = memory.apply(cfg, memory_plan, world), memory_plan.chosen.amp
    writer.info(memory_plan.describe())
    stores = image_cache.open_stores(cached, cfg.data.imgsz, cfg.data.cache, cache_dir)
    for store in stores.values():
        writer.info(store.describe())
    plan = make_plan(cfg.train, cfg.data.imgsz, world, amp, device.type, len(train_index))
    if saved and (change := resume.check_plan(saved[1]["plan"], plan, saved[0], saved[1]["epoch"], saved[1]["step"])):  # refuses before plan.json
        writer.info(change)
    writer.write_text("memory_plan.json", json.dumps(memory_plan.as_dict(), indent=2))
    if cfg.train.from_yolo:
        writer.info(translate(cfg.train.from_yolo).describe(asdict(cfg)))
    writer.info(f"world size {world} on {device.type}; data {spec.yaml_path} ({len(train_index)} train / "
                f"{len(val_index)} val images, {len(names)} classes)\n{plan.describe()}")
    writer.write_text("plan.json", plan.to_json())

    raw = build_model(cfg.model, names, cfg.train, cfg.data.imgsz, verbose=False)
    frozen = freeze_layers(raw, cfg.train.freeze)  # before DDP and the optimizer: frozen tensors are in neither
    if cfg.train.freeze:
        writer.info(f"train.freeze={cfg.train.freeze}: {len(frozen)} parameter tensors frozen ({frozen[0]} ...)")
    if plan.sync_bn:
        raw = convert_sync_batchnorm(raw, device, cfg.train.sync_bn_impl)
    raw = speed.to_memory_format(raw.to(device), cfg.train)
    sync_plan = sync.plan_sync(cfg.sync, node, raw, cfg.data.imgsz, plan.batch_per_rank, device, amp, cfg.train.amp)
    writer.info(sync_plan.describe())
    writer.run_info(collect_run_info(plan, sync_plan, node, device, memory_plan.as_dict()))  # a collective
    model = sync.wrap_ddp(raw, device, sync_plan, cfg.sync) if world > 1 else raw

    iterations = auto_iterations(len(train_index), cfg.train.batch, cfg.train.nbs, cfg.train.epochs)
    choice = choose_optimizer(cfg.train, len(names), iterations)
    optimizer = build_optimizer(raw, choice, plan.weight_decay, cfg.train.fused_optimizer)
    if cfg.train.cls_pw:
        raw.class_weights = class_weights(train_index, len(names), cfg.train.cls_pw, device)
        writer.info(f"train.cls_pw={cfg.train.cls_pw}: class loss weights "
                    f"{[round(w, 3) for w in raw.class_weights.tolist()]}")
    criterion = loss_criterion(raw)  # reads raw.class_weights
    state = TrainState(
        model=model, raw=raw, criterion=criterion, optimizer=optimizer,
        scheduler=build_scheduler(optimizer, cfg.train, choice, plan.schedule),
        scaler=torch.amp.GradScaler(device.type, enabled=amp == "fp16"),
        ema=ModelEMA(raw) if cfg.train.ema else None, forward=speed.training_forward(model, cfg.train),
        stopper=EarlyStopping(patience=cfg.train.patience),
        norm=LossNormaliser(criterion, cfg.train.loss_norm, device),
    )
    writer.info(f"optimizer {choice.name} lr0={choice.lr0} momentum={choice.momentum} warmup_bias_lr="
                f"{choice.warmup_bias_lr}; warmup {plan.warmup_batches} batches, {plan.total_steps} optimizer steps; "
                f"loss normaliser {state.norm.describe()}")
    writer.info(speed.describe(cfg.train, device))
    _maybe_resume(saved, state)
    set_criterion_epoch(state.criterion, state.epoch)  # a resumed run continues the loss's schedule
    del saved  # the state dicts are loaded; do not hold a second copy through training

    writer.info(f"data backend: {backend}")
    # Validate in fp16 when training uses AMP, as Ultralytics does: bf16's 8-bit mantissa would move
    # box corners by pixels at 640 px and bias mAP50-95.
    eval_dtype = torch.float16 if amp != "off" and device.type == "cuda" else None
    scorer = make_scorer(names, cfg.train.conf, cfg.train.iou, cfg.train.max_det, run_dir)
    # Before the train stream: validation's persistent workers fork before any loader thread exists.
    validate = make_validation(cfg.data, backend, val_index, plan.batch_per_rank * 2, device, rank, world, scorer,
                               eval_dtype, stores.get("val"))
    weights = balance.image_weights(train_index, len(names)) if cfg.data.sampler == "balanced" else None
    train_stream = build_train_stream(cfg.data, backend, train_index, plan.batch_per_rank,
                                      plan.loader_batches_per_epoch, plan.epochs, cfg.train.seed, device, rank, world,
                                      start_epoch=state.epoch,
                                      start_batch=plan.schedule.batches_before(state.epoch, state.step),
                                      weights=weights, store=stores.get("train"))
    train_batches = iter(train_stream)
    ctx = StepContext(plan, cfg.train, device, AMP_DTYPES[amp], cfg.logger.log_every_steps)
    writer.watch_validation(ValPreview(val_index, names, cfg.data.imgsz, scorer, cfg.logger.val_images,
                                      rect=cfg.data.val_rect))
    train_args = {"task": "detect", "model": cfg.model.cfg, "data": str(spec.yaml_path), "imgsz": cfg.data.imgsz,
                  "epochs": cfg.train.epochs, "batch": cfg.train.batch, "nbs": cfg.train.nbs}

    # A restart after an OOM inside a collective continues with the micro-batch split it recorded (from last.pt,
    # or from the start when the OOM came before the first checkpoint: a fresh run never starts over a last.pt).
    guard = OOMGuard(run_dir, cfg.train.oom_retries, read_split_hint(run_dir), stop=stop.event,
                     timeout_s=cfg.dist.timeout_s, save_every_s=cfg.train.save_every_s)
    if guard.splits > 1:
        writer.info(f"micro-batch split {guard.splits} ways ({HINT_FILE}: an earlier OOM inside a collective); "
                    f"effective batch and step count unchanged")
    result: EvalResult | None = None
    best: tuple[int, EvalResult | None] | None = None  # (epoch, its result on rank 0) of best.pt this session
    last_row: dict[str, Any] = {}
    start = time.perf_counter()
    if cfg.train.time:
        guard.deadline = time.monotonic() + cfg.train.time * 3600
        writer.info(f"train.time={cfg.train.time} h: epochs re-estimated after every epoch from the mean epoch time, "
                    f"as yolo train does; the run ends at the first optimizer step past the budget")

    def hook(plan):
        return after_step_hook(stop, guard, heartbeat, cfg.train.save_every_steps, plan.schedule,
                               lambda: _save(run_dir, state, cfg, plan, train_args, is_best=False))

    after_step = hook(plan)
    stopped_early = out_of_time = False
    session_epochs = 0
    while state.epoch < plan.epochs and not (stopped_early or out_of_time):
        stats = train_one_epoch(state, train_batches, ctx, writer, guard, after_step)
        out_of_time = guard.time_up
        if stats["stopped"] and not out_of_time:
            writer.info(f"stopped by {signal.Signals(stop.signum).name} after optimizer step {state.step}: last.pt "
                        f"holds it; continue with train.resume=true hydra.run.dir={run_dir}")
            writer.close()
            raise StopRequested(128 + stop.signum)
        train_end_s = time.perf_counter() - start  # run clock at the end of this epoch's training part
        state.epoch += 1
        session_epochs += 1
        if cfg.train.time and (timed := _time_budget_plan(cfg, plan, state, out_of_time, time.perf_counter() - start,
                                                          session_epochs, writer)) != plan:
            plan, ctx, after_step = timed, replace(ctx, plan=timed), hook(timed)
            state.scheduler = rebuild_scheduler(state.optimizer, state.step, cfg.train, choice, plan.schedule)
            raw.args.epochs = plan.epochs  # E2ELoss decays its one-to-many weight over the run's epochs
            set_mosaic_until(train_stream, max(0, plan.epochs - cfg.data.close_mosaic))
        set_criterion_epoch(state.criterion, state.epoch)
        epoch_result = None
        if state.epoch % cfg.train.val_every == 0 or state.epoch == plan.epochs:
            epoch_result = validate(weights_to_validate(state))
            result = epoch_result or result
        fitness = dist.broadcast_object(epoch_result.fitness if epoch_result else None)
        is_best = fitness is not None and fitness > state.best_fitness
        if is_best:
            state.best_fitness, best = fitness, (state.epoch, epoch_result)
        stopped_early = state.stopper(state.epoch, fitness) and state.epoch < plan.epochs  # same on every rank
        if rank == 0:  # the collectives above prove every rank finished this epoch
            _save(run_dir, state, cfg, plan, train_args, is_best)
            if cfg.train.save_period > 0 and state.epoch % cfg.train.save_period == 0:
                shutil.copy2(run_dir / "last.pt", run_dir / f"epoch{state.epoch}.pt")  # Ultralytics' save_period
        last_row = {"epoch": state.epoch, "step": state.step, **{k: stats[k] for k in LOSS_NAMES},
                    "mAP50": epoch_result.map50 if epoch_result else "",
                    "mAP50-95": epoch_result.map50_95 if epoch_result else "",
                    **({"mAP50-95_whole": epoch_result.whole.map50_95 if epoch_result else ""} if cfg.data.tile else {}),
                    "img_per_s": stats["img_per_s"], "epoch_time_s": stats["epoch_time_s"], "lr": stats["lr"],
                    "peak_mem_gib": stats["peak_mem_gib"], "train_end_s": train_end_s,
                    "elapsed_s": time.perf_counter() - start}  # after validation and checkpoint: Ultralytics' `time`
        if weights is not None:  # data.sampler=balanced: the boxes per class this epoch's draw showed
            last_row.update(balance.instances_seen(train_index, balance.epoch_draw(weights, cfg.train.seed,
                                                                                   state.epoch - 1), names))
        writer.epoch_row(last_row, epoch_result.per_class_ap50_95 if epoch_result else None,
                         state.ema.ema if state.ema else raw)
        writer.info("  ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in last_row.items()))
    if stopped_early:
        writer.info(f"early stop (train.patience={cfg.train.patience}): no better fitness since epoch "
                    f"{state.stopper.best_epoch}, so training ends after epoch {state.epoch} of {plan.epochs}")
    dist.barrier()
    if result is not None:
        writer.info(f"done: {state.epoch} epochs, {state.step} optimizer steps; final mAP50={result.map50:.4f} "
                    f"mAP50-95={result.map50_95:.4f}; best.pt and last.pt in {run_dir}")
        if best is not None and best[1] is not None:
            writer.info(f"best.pt holds epoch {best[0]}: mAP50={best[1].map50:.4f} mAP50-95={best[1].map50_95:.4f} "
                        f"(fitness {state.best_fitness:.4f}, Ultralytics' DetMetrics.fitness)")
    writer.close()
    return {**last_row, "world_size": world, "plan": plan.as_dict()}


def _time_budget_plan(cfg: Config, plan, state: TrainState, out_of_time: bool, elapsed_s: float,
                      session_epochs: int, writer) -> Any:
    """train.time after an epoch, before it validates (so a run ending here validates its last epoch): a partial
    epoch past the budget is the last (Ultralytics' timed stop); otherwise the epochs are re-estimated from the
    mean epoch time, as Ultralytics' trainer does, the same on every rank."""
    if out_of_time:
        writer.info(f"train.time={cfg.train.time} h reached after optimizer step {state.step}: epoch {state.epoch} "
                    "is the last")
        return replace(plan, epochs=state.epoch)
    epochs = dist.broadcast_object(time_budget_epochs(cfg.train.time, elapsed_s, session_epochs, state.epoch))
    if epochs != plan.epochs:
        writer.info(f"train.time: {epochs} epochs fit the budget (mean epoch {elapsed_s / session_epochs:.1f} s)")
    return replace(plan, epochs=epochs)


def weights_to_validate(state: TrainState) -> torch.nn.Module:
    """The EMA (else the raw model) with rank 0's buffers on every rank: each rank's BatchNorm statistics drift
    apart, and rank 0's are what best.pt saves, so distributed validation scores exactly those (as Ultralytics
    broadcasts its EMA buffers before validating)."""
    weights = state.ema.ema if state.ema else state.raw
    dist.broadcast_buffers(weights)
    return weights


def _resumed_batch(cfg: Config, saved: tuple[Path, dict[str, Any]] | None) -> Config:
    """batch=auto continues with the batch the run chose, and train.time with the epochs it last estimated, so a
    resumed run keeps its plan and step count (the time budget starts again, as Ultralytics' does on resume)."""
    if saved is None:
        return cfg
    if cfg.train.time:
        cfg = replace(cfg, train=replace(cfg.train, epochs=saved[1]["plan"]["epochs"]))
    if cfg.train.batch != "auto":
        return cfg
    return replace(cfg, train=replace(cfg.train, batch=saved[1]["config"]["train"]["batch"]))


def _maybe_resume(saved: tuple[Path, dict[str, Any]] | None, state: TrainState) -> None:
    if saved is None:
        return
    path, ckpt = saved
    state.load_state_dict(ckpt)
    checkpoint.set_rng_state(ckpt["rng"])
    log.info(f"resumed from {path}: {state.epoch} epochs / {state.step} steps done")


def _save(run_dir: Path, state: TrainState, cfg: Config, plan, train_args: dict, is_best: bool) -> None:
    checkpoint.save_train_state(run_dir / "last.pt", {**state.state_dict(), "config": asdict(cfg),
                                                     "plan": plan.as_dict()})
    if is_best:
        # Plain BatchNorm and NCHW weights: best.pt loads and exports anywhere, as Ultralytics' own would.
        weights = revert_sync_batchnorm(deepcopy(state.ema.ema if state.ema else state.raw))
        weights = weights.to(memory_format=torch.contiguous_format)
        checkpoint.save_ultralytics_weights(run_dir / "best.pt", weights, train_args, state.epoch,
                                            state.best_fitness, state.ema.updates if state.ema else 0)
