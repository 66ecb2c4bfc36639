"""Surviving an OOM mid-run on one rank of two (real gloo group): both ranks re-plan identically and the
optimizer step is redone with the same effective batch, so the update equals the run without an OOM."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch.nn.parallel import DistributedDataParallel as DDP

from tests.conftest import free_port
from tests.test_ddp import _batches, _init, images, make_model, per_image_loss, sgd_run
from yolo_ddp.engine.loop import train_one_epoch
from yolo_ddp.logging import NullWriter
from yolo_ddp.memory.oom import OOMGuard, OOMUnrecoverable, split_batch

pytestmark = pytest.mark.slow


class OOMOnce(torch.nn.Module):
    """Raises the real torch.OutOfMemoryError on its `at`-th forward, as the CUDA allocator would."""

    def __init__(self, inner: torch.nn.Module, at: int) -> None:
        super().__init__()
        self.inner, self.at, self.calls = inner, at, 0

    def forward(self, x: torch.Tensor):
        self.calls += 1
        if self.calls == self.at:
            raise torch.OutOfMemoryError("CUDA out of memory (injected by the test)")
        return self.inner(x)


def _worker(rank: int, world: int, port: int, out: str, accumulate: int, oom_at: int, oom_rank: int) -> None:
    _init(rank, world, port)
    model = make_model().fuse(verbose=False)  # no BN: how a batch is split cannot change the gradient
    ddp = DDP(OOMOnce(model, oom_at if rank == oom_rank else 0))
    per_rank = 2
    state, ctx, calls, before, trainable = sgd_run(ddp, model, world, per_rank, accumulate, steps=1)
    guard = OOMGuard(None, retries=2)
    stats = train_one_epoch(state, iter(_batches(rank, world, per_rank, accumulate)), ctx, NullWriter(), guard)
    after = torch.cat([p.detach().flatten() for p in trainable])
    torch.save({"calls": calls["n"], "step": state.step, "splits": guard.splits, "delta": before - after,
                "stats_splits": stats["micro_batch_splits"]}, Path(out) / f"r{rank}.pt")
    dist.barrier()
    dist.destroy_process_group()


def _reference_delta(accumulate: int) -> torch.Tensor:
    ref_model = make_model().fuse(verbose=False)
    ref_images = (images(4 * accumulate) * 255).to(torch.uint8).float() / 255
    per_image_loss(ref_model(ref_images)).sum().backward()
    return torch.cat([p.grad.flatten() for p in ref_model.parameters() if p.requires_grad])


@pytest.mark.parametrize(("accumulate", "oom_at", "where"), [(3, 2, "non-final micro-step"),
                                                             (1, 1, "final micro-step: reducer drained")])
def test_oom_on_one_rank_halves_the_micro_batch_on_both(tmp_path: Path, accumulate: int, oom_at: int,
                                                         where: str) -> None:
    mp.spawn(_worker, args=(2, free_port(), str(tmp_path), accumulate, oom_at, 1), nprocs=2, join=True)
    r = [torch.load(tmp_path / f"r{k}.pt") for k in (0, 1)]
    assert [x["splits"] for x in r] == [2, 2] and [x["stats_splits"] for x in r] == [2, 2]
    assert [x["step"] for x in r] == [1, 1], where  # same optimizer step count as without the OOM
    assert torch.equal(r[0]["delta"], r[1]["delta"])  # both ranks applied the same update
    ref = _reference_delta(accumulate)
    rel = (r[0]["delta"] - ref).norm() / ref.norm()
    assert rel <= 1e-4, f"{where}: update after recovery differs from the big-batch update: {rel:.2e}"


def test_split_batch_keeps_labels_with_their_images() -> None:
    batch = {"img": torch.arange(5).view(5, 1, 1, 1), "batch_idx": torch.tensor([0.0, 2, 2, 4]),
             "cls": torch.tensor([[1.0], [2], [3], [4]]), "bboxes": torch.arange(16.0).view(4, 4)}
    parts = split_batch(batch, 2)
    assert [len(p["img"]) for p in parts] == [2, 3]
    assert parts[0]["batch_idx"].tolist() == [0.0] and parts[1]["batch_idx"].tolist() == [0.0, 0.0, 2.0]
    assert parts[1]["cls"].flatten().tolist() == [2.0, 3.0, 4.0]


def test_retries_are_bounded() -> None:
    guard = OOMGuard(None, retries=1)
    guard.recover(step=3, batch_per_rank=8, where="forward")
    assert guard.splits == 2
    with pytest.raises(OOMUnrecoverable, match="after 1 recoveries"):
        guard.recover(step=3, batch_per_rank=8, where="forward")
    with pytest.raises(OOMUnrecoverable, match="already 1 image"):
        OOMGuard(None, retries=5, splits=8).recover(step=0, batch_per_rank=8, where="forward")
