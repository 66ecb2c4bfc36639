"""Our fp16 compression hook divides by the world size before the fp16 cast: a 2-rank gloo group where one
rank's bucket exceeds fp16's range but the average does not, as fp32-born gradients of a loss multiplied by
the world size under GradScaler can. torch's `fp16_compress_hook` (cast, then divide) returns inf there."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch.distributed.algorithms.ddp_comm_hooks import default_hooks

from tests.conftest import free_port
from yolo_ddp.sync.hooks import fp16_compress_hook

pytestmark = pytest.mark.slow
# rank 0 holds 1e5 (> 65504, fp16's largest), rank 1 1e4: the average, 55000, is an fp16 number
BUCKETS = ([1e5, -3.0, 1e-3], [1e4, 5.0, 3e-3])


class Bucket:
    """What the hooks read of DDP's GradBucket."""

    def __init__(self, values: list[float]) -> None:
        self._buffer = torch.tensor(values, dtype=torch.float32)

    def buffer(self) -> torch.Tensor:
        return self._buffer


def _worker(rank: int, world: int, port: int, out: str) -> None:
    torch.set_num_threads(1)
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    results = {name: hook(None, Bucket(BUCKETS[rank])).wait()
               for name, hook in (("ours", fp16_compress_hook), ("torch", default_hooks.fp16_compress_hook))}
    torch.save(results, Path(out) / f"rank{rank}.pt")
    dist.barrier()
    dist.destroy_process_group()


def test_fp16_compression_divides_before_the_cast(tmp_path):
    mp.spawn(_worker, args=(2, free_port(), str(tmp_path)), nprocs=2, join=True)
    expected = (torch.tensor(BUCKETS[0]) + torch.tensor(BUCKETS[1])) / 2
    for rank in range(2):
        r = torch.load(tmp_path / f"rank{rank}.pt")
        assert not torch.isfinite(r["torch"][0]), "torch's hook no longer overflows: ours may be unneeded"
        assert torch.isfinite(r["ours"]).all() and r["ours"].dtype == torch.float32
        torch.testing.assert_close(r["ours"], expected, rtol=1e-3, atol=1e-4)  # fp16 rounding only
