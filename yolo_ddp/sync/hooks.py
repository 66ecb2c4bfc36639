"""Register the chosen strategy on a DDP model with torch's own comm hooks, but one.

fp16 compression is ours: torch's `fp16_compress_hook` casts a bucket to fp16 and only then divides by the
world size. Our buckets hold `GradScaler scale x world x` the rank's gradient (the loss is multiplied by the
world size, yolo_ddp/engine/loop.py, as Ultralytics does, so DDP's average becomes a sum), and fp32-born
gradients (BatchNorm weights, sums over accumulated micro-batches) can exceed fp16's 65504 by up to that
factor while their average does not: the cast overflows, the step is skipped and the scale halves. Dividing
in fp32 before the cast, as torch's own fp32 all-reduce does, keeps those world x of headroom.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch.distributed.algorithms.ddp_comm_hooks import default_hooks, powerSGD_hook
from torch.nn.parallel import DistributedDataParallel as DDP

from yolo_ddp.config import SyncConfig


def fp16_compress_hook(process_group, bucket):  # no annotations: DDP checks them, and here they are strings
    """Average the bucket in fp16, dividing by the world size in fp32 before the cast (see the module doc);
    returns the future of the averaged fp32 bucket."""
    group = process_group if process_group is not None else dist.group.WORLD
    buffer = bucket.buffer()
    compressed = buffer.div_(group.size()).to(torch.float16)
    work = dist.all_reduce(compressed, group=group, async_op=True)
    return work.get_future().then(lambda fut: buffer.copy_(fut.value()[0]))


def register_comm_hook(model: DDP, strategy: str, cfg: SyncConfig, process_group=None) -> object | None:
    """Install the hook for `strategy` (allreduce keeps DDP's built-in path); returns the hook state."""
    if strategy == "allreduce":
        return None
    if strategy == "bf16_compress":
        model.register_comm_hook(process_group, default_hooks.bf16_compress_hook)
        return process_group
    if strategy == "fp16_compress":
        model.register_comm_hook(process_group, fp16_compress_hook)
        return process_group
    if strategy == "powersgd":
        # Plain all-reduce for the first steps lets the error-feedback state start from sane gradients.
        state = powerSGD_hook.PowerSGDState(process_group=process_group, matrix_approximation_rank=cfg.powersgd_rank,
                                            start_powerSGD_iter=cfg.powersgd_start_iter)
        model.register_comm_hook(state, powerSGD_hook.powerSGD_hook)
        return state
    raise ValueError(f"Config key 'sync.strategy': unknown strategy '{strategy}'.")
