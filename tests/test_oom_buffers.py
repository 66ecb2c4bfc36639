"""OOM recovery on a real, unfused YOLOv8n (BatchNorm buffers) over a 2-rank gloo DDP job.

DDP broadcasts buffers before a forward when the previous forward on that rank synchronised; a forward that
raised never updates that state, so without care the rank that ran out of memory broadcasts alone and the
job deadlocks (NCCL) or fails (gloo). Also: the step's one host-side check (OOM and stop flags merged).
"""

from __future__ import annotations

import datetime
import os
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch.nn.parallel import DistributedDataParallel as DDP

from tests.conftest import free_port
from tests.test_ddp import _batches, make_model, sgd_run
from tests.test_oom import OOMOnce
from yolo_ddp.engine.loop import train_one_epoch
from yolo_ddp.logging import NullWriter
from yolo_ddp.memory.oom import OOMGuard

pytestmark = pytest.mark.slow
TIMEOUT_S = 20  # a desynchronised collective fails the test in seconds instead of hanging CI


def _init(rank: int, port: int) -> None:
    torch.set_num_threads(1)
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=2, timeout=datetime.timedelta(seconds=TIMEOUT_S))


def _bn_worker(rank: int, port: int, out: str, accumulate: int, oom_at: int) -> None:
    _init(rank, port)
    model = make_model()  # unfused: BatchNorm running statistics are DDP buffers
    assert any(isinstance(m, torch.nn.BatchNorm2d) for m in model.modules())
    ddp = DDP(OOMOnce(model, oom_at if rank == 1 else 0))  # torch's default: buffers broadcast before forwards
    state, ctx, _, _, trainable = sgd_run(ddp, model, 2, 2, accumulate, steps=2)
    guard = OOMGuard(None, retries=2)
    train_one_epoch(state, iter(_batches(rank, 2, 2, accumulate * 2)), ctx, NullWriter(), guard)
    params = torch.cat([p.detach().flatten() for p in trainable])
    torch.save({"step": state.step, "splits": guard.splits, "params": params}, Path(out) / f"r{rank}.pt")
    dist.barrier()
    dist.destroy_process_group()


@pytest.mark.parametrize(("accumulate", "oom_at", "where"), [(1, 1, "batch=nbs: the drain forward"),
                                                             (3, 1, "first micro-step of an accumulated step")])
def test_oom_with_batchnorm_buffers_keeps_ranks_in_step(tmp_path: Path, accumulate: int, oom_at: int,
                                                         where: str) -> None:
    mp.spawn(_bn_worker, args=(free_port(), str(tmp_path), accumulate, oom_at), nprocs=2, join=True)
    r = [torch.load(tmp_path / f"r{k}.pt") for k in (0, 1)]
    assert [x["step"] for x in r] == [2, 2], where  # training went on past the recovered step
    assert [x["splits"] for x in r] == [2, 2], where
    assert torch.equal(r[0]["params"], r[1]["params"]), f"{where}: ranks applied different updates"


class _CountingGroupCalls:
    """Counts collectives on the OOM guard's host-side group (the job's own group under gloo)."""

    def __init__(self, group) -> None:
        self.group, self.n, self.real = group, 0, dist.all_reduce

    def __call__(self, tensor, *args, **kwargs):
        if kwargs.get("group") is self.group and not kwargs.get("async_op"):  # async: DDP's gradient buckets
            self.n += 1
        return self.real(tensor, *args, **kwargs)


def _count_worker(rank: int, port: int, out: str, accumulate: int, steps: int) -> None:
    from yolo_ddp.config import SyncConfig
    from yolo_ddp.engine.faults import StopSignal, after_step_hook
    from yolo_ddp.engine.heartbeat import Heartbeat
    from yolo_ddp.sync.ddp import buffer_sync_flag, wrap_ddp
    from yolo_ddp.sync.plan import SyncPlan

    _init(rank, port)
    model = make_model().fuse(verbose=False)
    plan = SyncPlan("allreduce", "allreduce", 25.0, "loopback", ("test",))
    ddp = wrap_ddp(model, torch.device("cpu"), plan, SyncConfig())
    state, ctx, _, _, trainable = sgd_run(ddp, model, 2, 2, accumulate, steps)
    ctx = type(ctx)(ctx.plan, ctx.train, ctx.device, None, log_every_steps=10**6)  # no logging collectives
    stop = StopSignal()
    guard = OOMGuard(None, retries=2, stop=stop.event)
    after_step = after_step_hook(stop, guard, Heartbeat(), 0, ctx.schedule, lambda: None)
    counter = _CountingGroupCalls(guard.group)
    dist.all_reduce = counter
    try:
        train_one_epoch(state, iter(_batches(rank, 2, 2, accumulate * steps)), ctx, NullWriter(), guard, after_step)
    finally:
        dist.all_reduce = counter.real
    params = torch.cat([p.detach().flatten() for p in trainable])
    torch.save({"host_collectives": counter.n, "step": state.step, "params": params,
                "bucket_view": ddp.gradient_as_bucket_view, "forward_sync": getattr(ddp, buffer_sync_flag(type(ddp)))},
               Path(out) / f"c{rank}.pt")
    dist.barrier()
    dist.destroy_process_group()


def test_one_host_collective_per_optimizer_step(tmp_path: Path) -> None:
    accumulate, steps = 3, 2
    mp.spawn(_count_worker, args=(free_port(), str(tmp_path), accumulate, steps), nprocs=2, join=True)
    r = [torch.load(tmp_path / f"c{k}.pt") for k in (0, 1)]
    assert [x["step"] for x in r] == [steps, steps]
    # OOM flag and stop flag share one check per optimizer step; none per micro-step.
    assert [x["host_collectives"] for x in r] == [steps, steps]
    assert torch.equal(r[0]["params"], r[1]["params"])
    assert r[0]["bucket_view"] and not r[0]["forward_sync"]  # wrap_ddp: no copies, no per-forward broadcast
