"""Our CollectiveBatchNorm2d computes what SyncBatchNorm defines: BatchNorm over the union of the ranks' batches.

On CPU (real 2-process gloo groups) it is compared with torch's BatchNorm2d on the union batch in one process:
outputs, input gradients, summed weight and bias gradients, running statistics. torch's nn.SyncBatchNorm has
CUDA kernels only (`batch_norm_stats` has no CPU kernel), so the direct comparison with it runs where CUDA
is, with two ranks on GPU 0 over gloo (bench/gpu_session.sh runs this file).
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn

from tests.conftest import free_port
from tests.test_ddp import _init
from yolo_ddp.engine.sync_bn import convert_sync_batchnorm

pytestmark = pytest.mark.slow
WORLD, C = 2, 5


def _inputs(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """A union batch of 6 (uneven: 4 + 2 images, as a partial last batch gives) and a weight for the loss."""
    g = torch.Generator().manual_seed(seed)
    return 3 + 2 * torch.randn(6, C, 7, 7, generator=g), torch.randn(6, C, 7, 7, generator=g)


def _shard(t: torch.Tensor, rank: int) -> torch.Tensor:
    return t[:4] if rank == 0 else t[4:]


def _bn(layer: nn.Module) -> nn.Module:
    with torch.no_grad():
        layer.weight.copy_(torch.linspace(0.5, 1.5, C))
        layer.bias.copy_(torch.linspace(-0.2, 0.2, C))
    return layer


def _run(layer: nn.Module, x: torch.Tensor, w: torch.Tensor, steps: int = 2) -> dict[str, torch.Tensor]:
    """Two training forwards (running statistics move twice) and one backward of sum(y * w)."""
    x = x.clone().requires_grad_(True)
    for _ in range(steps - 1):
        layer(x.detach())
    y = layer(x)
    (y * w).sum().backward()
    return {"y": y.detach(), "x_grad": x.grad, "w_grad": layer.weight.grad, "b_grad": layer.bias.grad,
            "running_mean": layer.running_mean, "running_var": layer.running_var}


def _worker(rank: int, port: int, out: str, device: str, impl: str) -> None:
    _init(rank, WORLD, port)
    dev = torch.device(device)
    model = nn.Sequential(_bn(nn.BatchNorm2d(C)))
    model = convert_sync_batchnorm(model, dev, impl).to(dev)
    kind = type(model[0]).__name__
    x, w = (_shard(t, rank).to(dev) for t in _inputs())
    got = {k: v.cpu() for k, v in _run(model[0], x, w).items()}
    torch.save({**got, "kind": kind}, Path(out) / f"r{rank}.pt")
    dist.destroy_process_group()


def _reference() -> dict[str, torch.Tensor]:
    x, w = _inputs()
    return _run(_bn(nn.BatchNorm2d(C)), x, w)


def _check(out: Path, expect_kind: str) -> None:
    ref = _reference()
    got = [torch.load(out / f"r{r}.pt") for r in range(WORLD)]
    assert {g["kind"] for g in got} == {expect_kind}
    for key in ("y", "x_grad"):  # each rank holds its own images' rows
        assert torch.allclose(torch.cat([g[key] for g in got]), ref[key], rtol=1e-5, atol=1e-5), key
    for key in ("w_grad", "b_grad"):  # DDP sums (then averages) the ranks' parameter gradients
        assert torch.allclose(sum(g[key] for g in got), ref[key], rtol=1e-5, atol=1e-5), key
    for g in got:
        for key in ("running_mean", "running_var"):  # unbiased variance over all 6 images, on every rank
            assert torch.allclose(g[key], ref[key], rtol=1e-5, atol=1e-6), key


def test_collective_batchnorm_is_batchnorm_on_the_union_batch(tmp_path: Path) -> None:
    mp.spawn(_worker, args=(free_port(), str(tmp_path), "cpu", "torch"), nprocs=WORLD, join=True)
    _check(tmp_path, "CollectiveBatchNorm2d")  # CPU always gets ours, whatever train.sync_bn_impl says


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="torch's SyncBatchNorm has CUDA kernels only")
@pytest.mark.parametrize("impl,kind", [("torch", "SyncBatchNorm"), ("collective", "CollectiveBatchNorm2d")])
def test_both_gpu_implementations_match_the_union_batch(tmp_path: Path, impl: str, kind: str) -> None:
    mp.spawn(_worker, args=(free_port(), str(tmp_path), "cuda:0", impl), nprocs=WORLD, join=True)
    _check(tmp_path, kind)
