"""Ultralytics' DetectionModel built from its yaml; weights only from a local path, never downloaded."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import numpy as np
import torch
from ultralytics.cfg import get_cfg
from ultralytics.models.yolo.detect import DetectionTrainer
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
    model.nc = len(names)
    model.args = loss_hyperparameters(train, imgsz)
    if cfg.weights:
        # Ultralytics' model.load copies the .pt's class-head rows by class name when the model knows its target
        # names (`yolo train cls_remap`); with the yaml's placeholder names it loads matching shapes only.
        model.names = dict(names) if cfg.cls_remap else {i: str(i) for i in range(len(names))}
        load_local_weights(model, Path(cfg.weights))
    model.names = dict(names)
    return model


def class_weights(index, nc: int, cls_pw: float, device: torch.device) -> torch.Tensor:
    """Ultralytics' `cls_pw` loss weights (DetectionTrainer.compute_class_weights: inverse class frequency in the
    train labels to the power cls_pw, absent classes at the mean), normalised to mean 1."""
    counts = np.bincount(np.asarray(index.labels[:, 0], np.int64), minlength=nc).astype(np.float32)
    if not counts.any():
        raise ValueError("Config key 'train.cls_pw': the train split has no labelled boxes to weigh classes by. "
                         "Set train.cls_pw=0 or add labels.")
    weights = DetectionTrainer.compute_class_weights(SimpleNamespace(args=SimpleNamespace(cls_pw=cls_pw)), counts)
    return torch.from_numpy(np.asarray(weights / weights.mean(), np.float32)).to(device)


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
