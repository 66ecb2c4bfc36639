"""The one module that owns checkpoint formats.

- `last.pt`: the training state (state dicts, counters, config, plan, RNG), plain tensors and
  Python types only, so resume loads it with `torch.load(weights_only=True)`.
- `best.pt` / `final.pt`: Ultralytics' own weights format (a pickled half-precision EMA module plus
  `train_args`), so `ultralytics.YOLO("best.pt")` loads and predicts with no conversion step.

Writes are atomic: a temp file in the same directory, fsync, then `os.replace`, so a process killed
mid-write leaves the previous file intact.
"""

from __future__ import annotations

import os
import pickle
import random
import tempfile
import zipfile
from copy import deepcopy
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np
import torch

FORMAT = "yolo_ddp.train_state"
FORMAT_VERSION = 1


class CheckpointError(ValueError):
    """A checkpoint that cannot be used: the message names the file and the fix."""


def atomic_save(obj: Any, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def rng_state() -> dict[str, Any]:
    np_state = np.random.get_state()
    state = {
        "python": list(random.getstate()[1]),
        "python_pos": random.getstate()[2],
        "numpy_keys": torch.from_numpy(np_state[1].astype(np.int64)),
        "numpy_pos": int(np_state[2]),
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    random.setstate((3, tuple(state["python"]), state["python_pos"]))
    np.random.set_state(("MT19937", state["numpy_keys"].numpy().astype(np.uint32), state["numpy_pos"], 0, 0.0))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"])


ELASTIC_RUN_FILE = "elastic_run_id"  # beside last.pt: which rendezvous id wrote it


def _elastic_run_id() -> str | None:
    rid = os.environ.get("TORCHELASTIC_RUN_ID", "")
    return None if rid in ("", "none") else rid  # "none" is shared by unrelated plain torchrun jobs


def save_train_state(path: Path, state: dict[str, Any]) -> None:
    atomic_save({"format": FORMAT, "format_version": FORMAT_VERSION, **state, "rng": rng_state()}, path)
    rid = _elastic_run_id()
    if rid and not (path.parent / ELASTIC_RUN_FILE).exists():
        (path.parent / ELASTIC_RUN_FILE).write_text(rid)


def continues_elastic_run(run_dir: Path) -> bool:
    """New workers of the same job: an agent restart (TORCHELASTIC_RESTART_COUNT > 0), or a re-rendezvous
    after another node restarted, which leaves this node's restart count at 0; then the run dir's last.pt
    was written under this same rendezvous id."""
    if int(os.environ.get("TORCHELASTIC_RESTART_COUNT", 0)) > 0:
        return True
    rid, marker = _elastic_run_id(), run_dir / ELASTIC_RUN_FILE
    return bool(rid) and marker.is_file() and marker.read_text().strip() == rid


def refuse_fresh_run_over(run_dir: Path, resume: Any) -> None:
    """A fresh run never trains over (and later overwrites) another run's files. An elastic restart is the
    same run continuing, not a fresh one (`continues_elastic_run`)."""
    if (run_dir / "last.pt").exists() and not resume and not continues_elastic_run(run_dir):
        raise CheckpointError(
            f"Run dir {run_dir} already holds a run ({run_dir / 'last.pt'}). Pass train.resume=true to continue "
            f"it, or start a new run in another dir (drop hydra.run.dir=...); nothing was changed."
        )


def load_train_state(path: Path) -> dict[str, Any]:
    """Load `last.pt` safely; a truncated or foreign file gets a clear error instead of a pickle traceback."""
    if not path.is_file():
        raise CheckpointError(f"Checkpoint {path} does not exist. Check the run dir, or start without train.resume.")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except (RuntimeError, OSError, pickle.UnpicklingError, zipfile.BadZipFile, EOFError, ValueError) as e:
        raise CheckpointError(
            f"Checkpoint {path} cannot be read as a yolo-ddp training state ({type(e).__name__}: "
            f"{(str(e).splitlines() or ['empty file'])[0][:200]}). It is truncated, corrupt, or not a yolo-ddp last.pt (Ultralytics "
            f".pt weights go in model.weights instead). Move it aside and resume from an intact copy, or train "
            f"without train.resume."
        ) from None
    if not isinstance(ckpt, dict) or ckpt.get("format") != FORMAT:
        raise CheckpointError(
            f"Checkpoint {path} is not a yolo-ddp training state (no '{FORMAT}' marker). To start from "
            f"Ultralytics weights use model.weights={path}; to resume, point at a run dir written by yolo-ddp."
        )
    if ckpt.get("format_version", 0) > FORMAT_VERSION:
        raise CheckpointError(f"Checkpoint {path} was written by a newer yolo-ddp; upgrade to resume it.")
    return ckpt


def save_ultralytics_weights(
    path: Path, ema_model: torch.nn.Module, train_args: dict[str, Any], epoch: int, fitness: float, updates: int
) -> None:
    """Weights in Ultralytics' layout so `YOLO(path)` loads them (EMA weights, fp16, as Ultralytics saves)."""
    from ultralytics import __version__

    model = deepcopy(ema_model).half()
    if hasattr(model, "criterion"):
        model.criterion = None  # training-only state; it holds device tensors
    atomic_save(
        {
            "epoch": epoch,
            "best_fitness": fitness,
            "model": None,
            "ema": model,
            "updates": updates,
            "optimizer": None,
            "train_args": train_args,
            "date": datetime.now().astimezone().isoformat(),
            "version": __version__,
        },
        path,
    )
