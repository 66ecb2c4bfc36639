"""Checkpoint format: atomic writes, weights_only loading, clear errors, RNG round trip."""

from __future__ import annotations

import random

import numpy as np
import pytest
import torch

from yolo_ddp.engine import checkpoint


class _Unpicklable:
    def __reduce__(self):
        raise RuntimeError("killed mid-write")


def test_failed_write_keeps_the_previous_file(tmp_path):
    path = tmp_path / "last.pt"
    checkpoint.save_train_state(path, {"epoch": 1})
    with pytest.raises(RuntimeError, match="killed mid-write"):
        checkpoint.atomic_save({"epoch": 2, "bad": _Unpicklable()}, path)
    assert checkpoint.load_train_state(path)["epoch"] == 1
    assert [p.name for p in tmp_path.iterdir()] == ["last.pt"]  # no temp file left behind


def test_training_state_loads_with_weights_only(tmp_path):
    state = {"model": torch.nn.Linear(2, 2).state_dict(), "epoch": 3, "step": 30, "best_fitness": 0.5,
             "config": {"train": {"batch": 16}}, "plan": {"world_size": 2}}
    checkpoint.save_train_state(tmp_path / "last.pt", state)
    loaded = torch.load(tmp_path / "last.pt", weights_only=True)
    assert loaded["epoch"] == 3 and loaded["format"] == checkpoint.FORMAT


@pytest.mark.parametrize(
    ("content", "match"),
    [(b"garbage", "cannot be read"), (None, "not a yolo-ddp training state"), (b"", "cannot be read")],
)
def test_bad_checkpoints_get_clear_errors(tmp_path, content, match):
    path = tmp_path / "last.pt"
    if content is None:
        torch.save({"model": {}}, path)  # a foreign dict
    else:
        path.write_bytes(content)
    with pytest.raises(checkpoint.CheckpointError, match=match):
        checkpoint.load_train_state(path)


def test_truncated_checkpoint(tmp_path):
    path = tmp_path / "last.pt"
    checkpoint.save_train_state(path, {"model": torch.nn.Linear(64, 64).state_dict()})
    path.write_bytes(path.read_bytes()[:-200])
    with pytest.raises(checkpoint.CheckpointError, match="truncated"):
        checkpoint.load_train_state(path)


def test_rng_round_trip():
    state = checkpoint.rng_state()
    expected = (random.random(), np.random.rand(), torch.rand(1).item())
    random.seed(1), np.random.seed(1), torch.manual_seed(1)
    checkpoint.set_rng_state(state)
    assert (random.random(), np.random.rand(), torch.rand(1).item()) == expected
