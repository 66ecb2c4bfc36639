"""SyncBatchNorm for every device: torch's on GPUs (or ours, `train.sync_bn_impl=collective`), ours on CPU.

torch.nn.SyncBatchNorm refuses CPU tensors (its kernels are CUDA-only), yet a CPU/gloo job with a
small per-rank batch has the same BatchNorm-statistics problem. On CPU the statistics are summed
with `torch.distributed.nn.functional.all_reduce`, which is differentiable, so autograd produces the
same gradients as one process on the union batch (the backward all-reduces the gradient sums, as
torch's CUDA implementation does). On GPUs it is one all-reduce of 2C+1 moments per layer and no host sync,
where torch's all-gathers per-rank statistics and then indexes them with a boolean mask, which blocks the host.
"""

from __future__ import annotations

import warnings

import torch
import torch.distributed as dist
from torch import nn
from torch.distributed.nn.functional import all_reduce

# The differentiable all_reduce is flagged deprecated in favour of functional collectives that have no
# autograd support on gloo yet; it is still the public differentiable one.
warnings.filterwarnings("ignore", message=r"torch\.distributed\.nn\.functional\.all_reduce is deprecated")


class CollectiveBatchNorm2d(nn.BatchNorm2d):
    """BatchNorm2d whose batch statistics span all ranks of the default process group."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not (self.training and dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1):
            return super().forward(x)
        dims, out_dtype = (0, 2, 3), x.dtype
        # Statistics in fp32: under bf16/fp16 autocast E[x^2] - mean^2 cancels to 0 (8-bit mantissa), as
        # torch's own BatchNorm kernels avoid by computing in fp32.
        x = x.float()
        count = torch.tensor([x.numel() / x.shape[1]], dtype=x.dtype, device=x.device)
        moments = torch.cat([count, x.sum(dims), (x * x).sum(dims)])
        moments = all_reduce(moments, op=dist.ReduceOp.SUM)
        n, total, total_sq = moments[0], moments[1 : 1 + x.shape[1]], moments[1 + x.shape[1] :]
        mean = total / n
        var = (total_sq / n - mean * mean).clamp_min(0)
        if self.track_running_stats:
            with torch.no_grad():
                self.num_batches_tracked += 1
                m = self.momentum if self.momentum is not None else 1.0 / float(self.num_batches_tracked)
                self.running_mean.mul_(1 - m).add_(mean.detach(), alpha=m)
                self.running_var.mul_(1 - m).add_(var.detach() * n / (n - 1).clamp_min(1), alpha=m)
        y = (x - mean[None, :, None, None]) * torch.rsqrt(var[None, :, None, None] + self.eps)
        if self.affine:
            y = y * self.weight[None, :, None, None] + self.bias[None, :, None, None]
        return y.to(out_dtype)


def _swap_batchnorm(module: nn.Module, match: tuple[type, ...], new_type: type[nn.Module]) -> nn.Module:
    """Replace every `match` layer by a `new_type` layer with the same settings, weights and statistics."""
    out = module
    if isinstance(module, match):
        # On the layer's own device and dtype: built on the CPU, it would leave a GPU model's BatchNorm behind.
        like = next((t for t in (*module.parameters(recurse=False), *module.buffers(recurse=False))
                     if t.is_floating_point()), None)
        where = {"device": like.device, "dtype": like.dtype} if like is not None else {}
        out = new_type(module.num_features, module.eps, module.momentum, module.affine, module.track_running_stats,
                       **where)
        out.load_state_dict(module.state_dict())
        out.train(module.training)
    for name, child in module.named_children():
        out.add_module(name, _swap_batchnorm(child, match, new_type))
    return out


def convert_sync_batchnorm(model: nn.Module, device: torch.device, impl: str = "torch") -> nn.Module:
    """torch's SyncBatchNorm on GPUs when `impl` is "torch" (`train.sync_bn_impl`); ours everywhere else."""
    if device.type == "cuda" and impl == "torch":
        return nn.SyncBatchNorm.convert_sync_batchnorm(model)
    return _swap_batchnorm(model, (nn.BatchNorm2d,), CollectiveBatchNorm2d)


def revert_sync_batchnorm(module: nn.Module) -> nn.Module:
    """Plain BatchNorm2d again, for saving weights that load anywhere (Ultralytics, single GPU, CPU)."""
    return _swap_batchnorm(module, (nn.SyncBatchNorm, CollectiveBatchNorm2d), nn.BatchNorm2d)


def has_collective_norm(model: nn.Module) -> bool:
    """True when the forward itself all-reduces (SyncBatchNorm on CUDA, CollectiveBatchNorm2d on CPU)."""
    return any(isinstance(m, (nn.SyncBatchNorm, CollectiveBatchNorm2d)) for m in model.modules())
