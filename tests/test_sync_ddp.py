"""Every sync strategy trains 2 CPU ranks (real gloo group, real torch DDP comm hooks) to identical
weights on both ranks; compression changes the bytes sent (measured at `dist.all_reduce`), not the
result beyond rounding."""

from __future__ import annotations

import gc
import os
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from tests.conftest import free_port
from yolo_ddp.config import SyncConfig
from yolo_ddp.sync.ddp import wrap_ddp
from yolo_ddp.sync.hooks import register_comm_hook
from yolo_ddp.sync.plan import SyncPlan

pytestmark = pytest.mark.slow
STRATEGIES = ("allreduce", "bf16_compress", "fp16_compress", "powersgd")
STEPS = 6
CFG = SyncConfig(powersgd_rank=2, powersgd_start_iter=2)


def tiny_net() -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Conv2d(3, 16, 3, padding=1), torch.nn.ReLU(),
                               torch.nn.Conv2d(16, 32, 3, stride=2, padding=1), torch.nn.ReLU(),
                               torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(), torch.nn.Linear(32, 10))


def _worker(rank: int, world: int, port: int, out: str) -> None:
    torch.set_num_threads(1)
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    sent = {"bytes": 0}
    real_all_reduce = dist.all_reduce

    def counting_all_reduce(tensor, *args, **kwargs):  # the hooks call dist.all_reduce at call time
        sent["bytes"] += tensor.numel() * tensor.element_size()
        return real_all_reduce(tensor, *args, **kwargs)

    results = {}
    for strategy in STRATEGIES:
        model = tiny_net()
        ddp = wrap_ddp(model, torch.device("cpu"), SyncPlan(strategy, strategy, 1.0, "CPU", ()), CFG)
        opt = torch.optim.SGD(model.parameters(), lr=0.1)
        gen = torch.Generator().manual_seed(100 + rank)  # each rank its own data
        sent["bytes"] = 0
        dist.all_reduce = counting_all_reduce
        try:
            for _ in range(STEPS):
                x, y = torch.randn(8, 3, 16, 16, generator=gen), torch.randint(0, 10, (8,), generator=gen)
                torch.nn.functional.cross_entropy(ddp(x), y).backward()
                opt.step()
                opt.zero_grad(set_to_none=True)
        finally:
            dist.all_reduce = real_all_reduce
        results[strategy] = {"params": torch.cat([p.detach().flatten() for p in model.parameters()]),
                             "sent": sent["bytes"]}
        del ddp  # its reducer holds gloo work objects: free it (cycles too) while the group is alive
        gc.collect()
    results["powersgd_after_overflow"] = _powersgd_after_one_overflow(rank)
    torch.save(results, Path(out) / f"rank{rank}.pt")
    dist.barrier()  # no rank tears the group down while the other still has work in flight
    dist.destroy_process_group()


def _powersgd_after_one_overflow(rank: int) -> dict:
    """Rank 0's loss overflows once, as an fp16 GradScaler step can; the step is skipped as GradScaler skips it."""
    model = tiny_net()
    ddp = torch.nn.parallel.DistributedDataParallel(model)
    state = register_comm_hook(ddp, "powersgd", CFG)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    gen = torch.Generator().manual_seed(100 + rank)
    finite = []
    for step in range(STEPS):
        x, y = torch.randn(8, 3, 16, 16, generator=gen), torch.randint(0, 10, (8,), generator=gen)
        overflow = float("inf") if step == CFG.powersgd_start_iter + 1 and rank == 0 else 1.0
        (torch.nn.functional.cross_entropy(ddp(x), y) * overflow).backward()
        grads_finite = all(bool(p.grad.isfinite().all()) for p in model.parameters())
        finite.append(grads_finite)
        if grads_finite:
            opt.step()
        opt.zero_grad(set_to_none=True)
    residual_finite = all(bool(e.isfinite().all()) for e in state.error_dict.values())
    del ddp
    gc.collect()
    return {"grads_finite": finite, "residual_finite": residual_finite}


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    out = tmp_path_factory.mktemp("sync")
    mp.spawn(_worker, args=(2, free_port(), str(out)), nprocs=2, join=True)
    return [torch.load(out / f"rank{r}.pt") for r in range(2)]


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_both_ranks_end_with_identical_weights(runs, strategy):
    assert torch.equal(runs[0][strategy]["params"], runs[1][strategy]["params"])


def test_compression_changes_bytes_sent_not_the_result(runs):
    r = runs[0]
    grad_bytes = r["allreduce"]["params"].numel() * 4
    assert r["allreduce"]["sent"] == 0  # DDP's built-in reducer: no Python hook in the path
    for half in ("bf16_compress", "fp16_compress"):
        assert r[half]["sent"] == STEPS * grad_bytes // 2, half
        ref = r["allreduce"]["params"]
        rel = (r[half]["params"] - ref).norm() / ref.norm()
        assert rel < 1e-3, f"{half}: weights differ from fp32 all-reduce by {rel:.2e}, more than rounding"
    # PowerSGD: plain all-reduce for the first start_iter - 1 steps, then low-rank factors only.
    assert 0 < r["powersgd"]["sent"] < (CFG.powersgd_start_iter - 1) * grad_bytes + (STEPS - 1) * grad_bytes / 2


def test_powersgd_residual_never_recovers_from_one_overflow(runs):
    """Why sync.strategy=powersgd is refused with fp16 AMP (yolo_ddp.sync.plan.refuse_powersgd_with_fp16):
    torch's error feedback keeps the overflowed residual, so every later step's gradients are inf/NaN too."""
    overflow_at = CFG.powersgd_start_iter + 1
    for r in runs:
        seen = r["powersgd_after_overflow"]
        assert all(seen["grads_finite"][:overflow_at])
        assert not any(seen["grads_finite"][overflow_at:]), seen  # clean data, still non-finite: poisoned
        assert not seen["residual_finite"]
