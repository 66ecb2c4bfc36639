"""What ranks must agree on for the trained model to be Ultralytics' (real 2-process gloo groups):
SyncBatchNorm statistics under bf16, and the EMA weights that validation scores."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from ultralytics.utils.torch_utils import ModelEMA

from tests.conftest import free_port
from tests.test_ddp import _init
from yolo_ddp.engine.sync_bn import CollectiveBatchNorm2d
from yolo_ddp.engine.train import weights_to_validate

pytestmark = pytest.mark.slow


def _union(seed: int = 0) -> torch.Tensor:
    """Activations with a large mean and small spread, as after a conv: E[x^2] - mean^2 cancels in bf16."""
    g = torch.Generator().manual_seed(seed)
    return (4 + 0.5 * torch.randn(4, 3, 4, 4, generator=g)).to(torch.bfloat16)


def _bn_worker(rank: int, world: int, port: int, out: str) -> None:
    _init(rank, world, port)
    bn = CollectiveBatchNorm2d(3)
    x = _union().chunk(world)[rank]
    y = bn(x)
    torch.save({"y": y, "dtype": y.dtype, "running_var": bn.running_var}, Path(out) / f"bn{rank}.pt")
    dist.destroy_process_group()


def test_collective_batchnorm_statistics_in_fp32_under_bf16(tmp_path):
    mp.spawn(_bn_worker, args=(2, free_port(), str(tmp_path)), nprocs=2, join=True)
    ref_bn = torch.nn.BatchNorm2d(3)
    ref = ref_bn(_union().float())  # fp32 statistics of the same bf16 values, on the union batch
    got = [torch.load(tmp_path / f"bn{r}.pt") for r in range(2)]
    assert got[0]["dtype"] == torch.bfloat16  # the layer keeps the activation dtype
    y = torch.cat([g["y"].float() for g in got])
    rel = ((y - ref).norm() / ref.norm()).item()
    assert rel < 1e-2, f"SyncBatchNorm under bf16 differs from fp32 statistics by {rel:.2e}"
    assert torch.allclose(got[0]["running_var"], ref_bn.running_var, rtol=1e-3)


def _ema_worker(rank: int, world: int, port: int, out: str) -> None:
    _init(rank, world, port)
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4))
    ema = ModelEMA(model)
    ema.ema[1].running_mean.fill_(float(rank + 1))  # BatchNorm statistics drift apart per rank
    validated = weights_to_validate(SimpleNamespace(ema=ema, raw=model))
    torch.save(validated[1].running_mean, Path(out) / f"ema{rank}.pt")
    dist.destroy_process_group()


def test_validation_scores_rank0_ema_on_every_rank(tmp_path):
    mp.spawn(_ema_worker, args=(2, free_port(), str(tmp_path)), nprocs=2, join=True)
    for r in range(2):
        assert torch.equal(torch.load(tmp_path / f"ema{r}.pt"), torch.ones(4)), f"rank {r} validated its own EMA"
