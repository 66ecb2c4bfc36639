"""DDP's buffer-sync flag on every torch we support (2.11 to 2.14): torch 2.13 renamed `broadcast_buffers` to
`forward_sync_buffers`, and the old name also leaves buffers out of the sync at construction. `wrap_ddp` and
`forward_alone` pick the name from DDP's signature and mean the same with either: buffers from rank 0 once, at
the wrap, and no broadcast before a forward. bench/gpu_session.sh image-smoke runs the trainer on torch 2.11."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch.nn.parallel import DistributedDataParallel

from yolo_ddp.config import SyncConfig
from yolo_ddp.sync import ddp as sync_ddp
from yolo_ddp.sync.plan import SyncPlan

PLAN = SyncPlan("allreduce", "allreduce", 25.0, "loopback", ("test",))


class FakeDDP211:
    """torch 2.11's DistributedDataParallel signature, word for word; records what it was given."""

    def __init__(self, module, device_ids=None, output_device=None, dim=0, broadcast_buffers=True, init_sync=True,
                 process_group=None, bucket_cap_mb=None, find_unused_parameters=False, check_reduction=False,
                 gradient_as_bucket_view=False, static_graph=False, delay_all_reduce_named_params=None,
                 param_to_hook_all_reduce=None, mixed_precision=None, device_mesh=None,
                 skip_all_reduce_unused_params=False, bucket_cap_mb_list=None):
        self.module, self.broadcast_buffers, self.bucket_cap_mb = module, broadcast_buffers, bucket_cap_mb
        self.gradient_as_bucket_view = gradient_as_bucket_view


class DDPBefore213(DistributedDataParallel):
    """The installed DDP behind torch 2.11's signature: `broadcast_buffers`, no `forward_sync_buffers`."""

    def __init__(self, module, device_ids=None, bucket_cap_mb=None, broadcast_buffers=True,
                 gradient_as_bucket_view=False):
        super().__init__(module, device_ids=device_ids, bucket_cap_mb=bucket_cap_mb,
                         broadcast_buffers=broadcast_buffers, gradient_as_bucket_view=gradient_as_bucket_view)


def test_the_flag_is_read_off_the_signature():
    assert sync_ddp.buffer_sync_flag(FakeDDP211) == "broadcast_buffers"
    assert sync_ddp.buffer_sync_flag(DDPBefore213) == "broadcast_buffers"
    named = "forward_sync_buffers" in DistributedDataParallel.__init__.__code__.co_varnames
    assert sync_ddp.buffer_sync_flag(DistributedDataParallel) == ("forward_sync_buffers" if named else
                                                                   "broadcast_buffers")


def test_wrap_on_torch_2_11_passes_broadcast_buffers_and_syncs_buffers_first(monkeypatch):
    broadcast: list[torch.nn.Module] = []
    monkeypatch.setattr(sync_ddp, "DDP", FakeDDP211)
    monkeypatch.setattr(sync_ddp, "register_comm_hook", lambda *args: None)
    monkeypatch.setattr(sync_ddp.dist, "broadcast_buffers", lambda module, src=0: broadcast.append(module))
    model = torch.nn.BatchNorm2d(4)
    wrapped = sync_ddp.wrap_ddp(model, torch.device("cpu"), PLAN, SyncConfig())
    assert wrapped.module is model and wrapped.gradient_as_bucket_view and wrapped.bucket_cap_mb == 25.0
    assert wrapped.broadcast_buffers is False  # no broadcast before every forward
    assert broadcast == [model]  # ... but rank 0's buffers once, as `forward_sync_buffers=False` does
    wrapped.broadcast_buffers = True
    with sync_ddp.forward_alone(wrapped):
        assert wrapped.broadcast_buffers is False
    assert wrapped.broadcast_buffers is True


def _worker(rank: int, out: str) -> None:
    torch.set_num_threads(1)
    # A file store, not rank 0's TCP store: a rank still tearing down never talks to a store that rank 0 took
    # with it on exit (seen as `terminate called without an active exception` on a loaded CI machine).
    dist.init_process_group("gloo", init_method=f"file://{out}/store", rank=rank, world_size=2)
    seen = {}
    for name, cls in (("installed", DistributedDataParallel), ("before_2_13", DDPBefore213)):
        sync_ddp.DDP = cls
        torch.manual_seed(0)
        model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4, momentum=0.0))
        model[1].running_mean.fill_(float(rank + 1))  # rank 0 has 1, rank 1 has 2
        wrapped = sync_ddp.wrap_ddp(model, torch.device("cpu"), PLAN, SyncConfig())
        at_wrap = model[1].running_mean.clone()
        model[1].running_mean.fill_(float(10 * (rank + 1)))  # a forward must not broadcast these
        wrapped(torch.randn(2, 3, 8, 8)).sum().backward()
        with sync_ddp.forward_alone(wrapped):
            wrapped(torch.randn(2, 3, 8, 8)).sum().backward()
        seen[name] = (at_wrap, model[1].running_mean.clone())
        del wrapped  # its reducer holds the process group: gone before the group is destroyed, not at exit
    torch.save(seen, Path(out) / f"r{rank}.pt")
    dist.barrier()
    dist.destroy_process_group()


@pytest.mark.slow
def test_rank_0_buffers_at_the_wrap_and_none_per_forward_with_either_name(tmp_path):
    mp.spawn(_worker, args=(str(tmp_path),), nprocs=2, join=True)
    for rank in (0, 1):
        seen = torch.load(tmp_path / f"r{rank}.pt")
        for name, (at_wrap, after_forward) in seen.items():
            assert torch.equal(at_wrap, torch.ones(4)), (name, rank)  # rank 0's, on both ranks
            assert torch.equal(after_forward, torch.full((4,), 10.0 * (rank + 1))), (name, rank)  # each its own
