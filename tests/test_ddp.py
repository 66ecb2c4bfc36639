"""DDP correctness on real 2-process gloo groups (127.0.0.1), with Ultralytics' real YOLOv8n.

- SyncBN: 2 ranks produce the same gradients as 1 process on the union batch.
- Accumulation: exactly one gradient all-reduce per optimizer step (counted with a DDP comm hook),
  step counts add up, and the accumulated update equals one big batch.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch.distributed.algorithms.ddp_comm_hooks import default_hooks
from torch.nn.parallel import DistributedDataParallel as DDP

from tests.conftest import free_port
from yolo_ddp.config import TrainConfig
from yolo_ddp.engine.loop import StepContext, TrainState, train_one_epoch
from yolo_ddp.engine.model import build_model
from yolo_ddp.engine.sync_bn import convert_sync_batchnorm
from yolo_ddp.logging import NullWriter
from yolo_ddp.memory.oom import OOMGuard
from yolo_ddp.plan import make_plan

pytestmark = pytest.mark.slow
NAMES = {0: "a", 1: "b"}
IMGSZ = 64


def make_model(seed: int = 0):
    torch.manual_seed(seed)
    return build_model_cfg()


def build_model_cfg():
    from yolo_ddp.config import ModelConfig

    return build_model(ModelConfig(cfg="yolov8n.yaml"), NAMES, TrainConfig(), IMGSZ)


def images(n: int, seed: int = 1) -> torch.Tensor:
    return torch.rand(n, 3, IMGSZ, IMGSZ, generator=torch.Generator().manual_seed(seed))


def per_image_loss(preds) -> torch.Tensor:
    """A loss that is a sum of per-image terms, so batch splits must not change the gradient."""
    preds = preds if isinstance(preds, dict) else preds[1]
    # Every head output takes part, so every parameter gets a gradient (DDP waits for all of them).
    return preds["boxes"].float().pow(2).mean(dim=(1, 2)) + preds["scores"].float().pow(2).mean(dim=(1, 2))


def flat_grads(model) -> torch.Tensor:
    return torch.cat([p.grad.flatten() for p in model.parameters() if p.grad is not None])


def _init(rank: int, world: int, port: int) -> None:
    torch.set_num_threads(1)
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)


def _syncbn_worker(rank: int, world: int, port: int, out: str) -> None:
    _init(rank, world, port)
    model = convert_sync_batchnorm(make_model(), torch.device("cpu"))
    ddp = DDP(model)
    x = images(8).chunk(world)[rank]
    per_image_loss(ddp(x)).mean().backward()  # DDP averages over ranks: mean over the union batch
    torch.save(flat_grads(model), Path(out) / f"grad{rank}.pt")
    dist.destroy_process_group()


def test_syncbn_ddp_matches_one_process_on_union_batch(tmp_path):
    mp.spawn(_syncbn_worker, args=(2, free_port(), str(tmp_path)), nprocs=2, join=True)
    ref_model = make_model()
    per_image_loss(ref_model(images(8))).mean().backward()
    ref = flat_grads(ref_model)
    for rank in range(2):
        g = torch.load(tmp_path / f"grad{rank}.pt")
        rel = (g - ref).norm() / ref.norm()
        assert rel <= 1e-4, f"rank {rank}: relative gradient error {rel:.2e}"


def _batches(rank: int, world: int, per_rank: int, n_micro: int) -> list[dict]:
    x = images(per_rank * world * n_micro)
    out = []
    for m in range(n_micro):
        start = (m * world + rank) * per_rank  # micro-batch m of the union, this rank's slice
        img = (x[start:start + per_rank] * 255).to(torch.uint8)
        out.append({"img": img, "batch_idx": torch.zeros(0), "cls": torch.zeros(0, 1), "bboxes": torch.zeros(0, 4)})
    return out


def _sum_criterion(preds, targets):
    loss = per_image_loss(preds).sum()
    return torch.stack([loss, loss * 0, loss * 0]), {"box": loss.detach(), "cls": loss.detach() * 0,
                                                      "dfl": loss.detach() * 0}


def sgd_run(ddp: DDP, model, world: int, per_rank: int, accumulate: int, steps: int):
    """An SGD(lr=1) TrainState whose DDP counts its gradient all-reduces; the update is minus the gradient."""
    calls = {"n": 0}

    def counting_hook(state, bucket):
        calls["n"] += 1
        return default_hooks.allreduce_hook(None, bucket)

    ddp.register_comm_hook(None, counting_hook)
    train_cfg = TrainConfig(batch=per_rank * world, nbs=per_rank * world * accumulate, grad_clip=1e9,
                            warmup_epochs=0, epochs=1)
    plan = make_plan(train_cfg, IMGSZ, world, "off", "cpu", train_images=per_rank * world * accumulate * steps)
    assert plan.accumulate == accumulate and plan.steps_per_epoch == steps
    trainable = [p for p in model.parameters() if p.requires_grad]
    before = torch.cat([p.detach().flatten().clone() for p in trainable])
    optimizer = torch.optim.SGD(model.parameters(), lr=1.0)
    state = TrainState(model=ddp, raw=model, criterion=_sum_criterion, optimizer=optimizer,
                       scheduler=torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: 1.0),
                       scaler=torch.amp.GradScaler("cpu", enabled=False))
    ctx = StepContext(plan, train_cfg, torch.device("cpu"), None, log_every_steps=1)
    return state, ctx, calls, before, trainable


def _accum_worker(rank: int, world: int, port: int, out: str, accumulate: int, steps: int) -> None:
    _init(rank, world, port)
    model = make_model().fuse(verbose=False)  # BN folded away: micro-batch splits cannot change the function
    per_rank = 2
    state, ctx, calls, before, trainable = sgd_run(DDP(model), model, world, per_rank, accumulate, steps)
    train_one_epoch(state, iter(_batches(rank, world, per_rank, accumulate * steps)), ctx, NullWriter(), OOMGuard(None, 0))
    model.train()
    after = torch.cat([p.detach().flatten() for p in trainable])
    torch.save({"calls": calls["n"], "step": state.step, "delta": before - after}, Path(out) / f"acc{rank}.pt")
    dist.destroy_process_group()


def _run_accum(tmp_path: Path, accumulate: int, steps: int) -> dict:
    out = tmp_path / f"a{accumulate}s{steps}"
    out.mkdir()
    mp.spawn(_accum_worker, args=(2, free_port(), str(out), accumulate, steps), nprocs=2, join=True)
    return torch.load(out / "acc0.pt")


def test_one_allreduce_per_optimizer_step_and_update_equals_big_batch(tmp_path):
    buckets = _run_accum(tmp_path, accumulate=1, steps=1)["calls"]  # buckets in one synchronised backward
    assert buckets >= 1
    r = _run_accum(tmp_path, accumulate=3, steps=1)
    assert r["step"] == 1
    assert r["calls"] == buckets, "gradients were all-reduced on a non-final micro-step"

    # One SGD step with lr=1: the parameter change is the gradient. It must equal the gradient of the
    # summed per-image loss over the union of all micro-batches (2 ranks x 3 micro-steps x 2 images).
    ref_model = make_model().fuse(verbose=False)
    ref_images = (images(12) * 255).to(torch.uint8).float() / 255  # what the loop feeds the model
    per_image_loss(ref_model(ref_images)).sum().backward()
    ref = torch.cat([p.grad.flatten() for p in ref_model.parameters() if p.requires_grad])
    rel = (r["delta"] - ref).norm() / ref.norm()
    assert rel <= 1e-4, f"accumulated update differs from one big batch: {rel:.2e}"

    two = _run_accum(tmp_path, accumulate=2, steps=2)
    assert two["step"] == 2 and two["calls"] == 2 * buckets
