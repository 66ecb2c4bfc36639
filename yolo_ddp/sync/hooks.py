"""Register the chosen strategy on a DDP model with torch's own comm hooks (no hand-written collectives)."""

from __future__ import annotations

from torch.distributed.algorithms.ddp_comm_hooks import default_hooks, powerSGD_hook
from torch.nn.parallel import DistributedDataParallel as DDP

from yolo_ddp.config import SyncConfig


def register_comm_hook(model: DDP, strategy: str, cfg: SyncConfig, process_group=None) -> object | None:
    """Install the hook for `strategy` (allreduce keeps DDP's built-in path); returns the hook state."""
    if strategy == "allreduce":
        return None
    if strategy == "bf16_compress":
        model.register_comm_hook(process_group, default_hooks.bf16_compress_hook)
        return process_group
    if strategy == "fp16_compress":
        model.register_comm_hook(process_group, default_hooks.fp16_compress_hook)
        return process_group
    if strategy == "powersgd":
        # Plain all-reduce for the first steps lets the error-feedback state start from sane gradients.
        state = powerSGD_hook.PowerSGDState(process_group=process_group, matrix_approximation_rank=cfg.powersgd_rank,
                                            start_powerSGD_iter=cfg.powersgd_start_iter)
        model.register_comm_hook(state, powerSGD_hook.powerSGD_hook)
        return state
    raise ValueError(f"Config key 'sync.strategy': unknown strategy '{strategy}'.")
