"""Speed switches: they change how the model runs, not what it computes. bench/RESULTS.md has each one's figures.

- `train.channels_last`: NHWC weights, the layout the fast convolution kernels work in (oneDNN on CPU,
  tensor-core kernels on CUDA).
- `train.fused_optimizer`: one fused SGD/AdamW kernel over all parameters; under fp16 it also reads
  GradScaler's inf flag on the device instead of syncing the host every step.
- `train.compile`: `torch.compile` of the training forward (DDP-wrapped when world > 1, so the DDP
  optimizer splits graphs at gradient buckets). The first step pays the compile time.
- `train.cudnn_benchmark`: cuDNN times its algorithms once per input shape; shapes are fixed unless
  multi-scale or a resize schedule changes them, and each new shape is timed once.
"""

from __future__ import annotations

import logging
import os
import shutil

import torch

from yolo_ddp.config import TrainConfig

log = logging.getLogger(__name__)


def configure_backends(train: TrainConfig, device: torch.device) -> None:
    if device.type == "cuda":
        # Benchmark picks kernels by timing, so a deterministic run (train.deterministic, Ultralytics' default)
        # keeps it off, as `yolo train` never turns it on.
        torch.backends.cudnn.benchmark = train.cudnn_benchmark and not train.deterministic
    if train.compile:
        _require_compiler(device)


def _require_compiler(device: torch.device) -> None:
    """torch.compile builds C++ (inductor, CPU) or Triton's C launcher (CUDA): fail before the first step, not in it."""
    names = [os.environ.get("CXX", "g++")] if device.type == "cpu" else [os.environ.get("CC", "gcc"), "cc", "clang"]
    if not any(shutil.which(n) for n in names):
        raise ValueError(
            f"Config key 'train.compile': torch.compile on {device.type} needs a compiler ({' or '.join(names)}) and "
            f"none is on PATH. Install one (e.g. apt-get install g++), point {'CXX' if device.type == 'cpu' else 'CC'} "
            "at it, or set train.compile=false."
        )


def to_memory_format(model: torch.nn.Module, train: TrainConfig) -> torch.nn.Module:
    return model.to(memory_format=torch.channels_last) if train.channels_last else model


def training_forward(model: torch.nn.Module, train: TrainConfig) -> torch.nn.Module:
    """The module the step calls: `model` itself, or a compiled wrapper around it sharing its parameters.

    The wrapper is separate so EMA copies, checkpoints and validation use the plain model.
    """
    if not train.compile:
        return model
    log.info("train.compile=true: the first optimizer step includes torch.compile's compile time")
    return torch.compile(model)


def describe(train: TrainConfig, device: torch.device) -> str:
    switches = {"channels_last": train.channels_last, "fused optimizer": train.fused_optimizer,
                "compile": train.compile}
    if device.type == "cuda":
        switches["cudnn.benchmark"] = train.cudnn_benchmark
    return "speed: " + ", ".join(f"{k} {'on' if v else 'off'}" for k, v in switches.items())
