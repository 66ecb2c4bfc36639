"""Ultralytics' DetectionModel built from its yaml; weights only from a local path, never downloaded."""

from __future__ import annotations

from pathlib import Path

import torch
from ultralytics.cfg import get_cfg
from ultralytics.nn.tasks import DetectionModel, load_checkpoint

from yolo_ddp.config import ModelConfig, TrainConfig


def loss_hyperparameters(train: TrainConfig, imgsz: int):
    """Ultralytics' own hyperparameter namespace: its loss reads the box/cls/dfl gains from `model.args`, and
    E2ELoss the run's epochs (its one-to-many weight decays over them)."""
    return get_cfg(overrides={"box": train.box, "cls": train.cls, "dfl": train.dfl, "imgsz": imgsz,
                              "epochs": train.epochs})


def build_model(
    cfg: ModelConfig, names: dict[int, str], train: TrainConfig, imgsz: int, verbose: bool = False
) -> DetectionModel:
    model = DetectionModel(cfg=cfg.cfg, nc=len(names), verbose=verbose)
    model.names = dict(names)
    model.nc = len(names)
    model.args = loss_hyperparameters(train, imgsz)
    if cfg.weights:
        load_local_weights(model, Path(cfg.weights))
    return model


def load_local_weights(model: DetectionModel, path: Path) -> None:
    """Initialise from a local Ultralytics .pt (matching layers only, as `yolo train model=x.pt` does)."""
    if not path.is_file():
        raise FileNotFoundError(
            f"Config key 'model.weights': {path} does not exist. Nothing is downloaded at run time: copy the "
            f".pt file to this machine and pass its path, or leave model.weights empty to train from scratch."
        )
    # Ultralytics weights are pickled modules, so this needs full unpickling: only a path the user named.
    source, _ = load_checkpoint(str(path))
    model.load(source, verbose=False)


def loss_criterion(model: DetectionModel):
    """Ultralytics' loss for this head (v8DetectionLoss, or E2ELoss for end-to-end heads such as YOLO26)."""
    return model.init_criterion()


def freeze_layers(model: torch.nn.Module, freeze: int | list[int] | None) -> list[str]:
    """Ultralytics' `freeze` (engine/trainer.py `_setup_train`): parameters under `model.<i>.` for the first
    `freeze` layers (or the listed indices) and every `.dfl` stop training; any other floating-point parameter
    trains. Returns the frozen names; refuses to freeze everything, as Ultralytics does."""
    layers = range(freeze) if isinstance(freeze, int) else (freeze or [])
    prefixes = [f"model.{i}." for i in layers] + [".dfl"]
    frozen = []
    for name, p in model.named_parameters():
        if any(x in name for x in prefixes):
            p.requires_grad = False
            frozen.append(name)
        elif not p.requires_grad and p.dtype.is_floating_point:
            p.requires_grad = True
    if not any(p.requires_grad for p in model.parameters()):
        raise ValueError(f"Config key 'train.freeze': {freeze} froze the whole model, so nothing would train. "
                         "Freeze fewer leading layers, or list the indices to freeze (train.freeze=[0,1,2]).")
    return frozen


def set_criterion_epoch(criterion, completed_epochs: int) -> None:
    """Ultralytics' per-epoch loss schedule: its trainer calls `criterion.update()` after every epoch's training
    (E2ELoss: the one-to-many weight decays from 0.8 to 0.1 over the run), and on resume sets `updates` to the
    completed epochs. Setting the count is both; criteria without a schedule have no `update`."""
    if hasattr(criterion, "update") and hasattr(criterion, "updates") and completed_epochs > 0:
        criterion.updates = completed_epochs - 1
        criterion.update()


def unwrap(model: torch.nn.Module) -> torch.nn.Module:
    return model.module if isinstance(model, torch.nn.parallel.DistributedDataParallel) else model
