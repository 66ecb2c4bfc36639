"""Per-rank memory of a training step, by component, before the first step.

Static bytes come from the real parameter count: fp32 weights, fp32 gradients, optimizer state (SGD
momentum: one fp32 copy; AdamW: two; MuSGD: two for matrices and filters, one otherwise), the EMA copy,
DDP's gradient buckets (a second fp32 copy of the gradients unless they are bucket views), and autocast's
cached half-precision weight copies under AMP.

Activations are measured, not guessed: a forward pass in train mode at the run's largest image size,
with `torch.autograd.graph.saved_tensors_hooks` adding up every distinct tensor autograd keeps for the
backward (parameters excluded). That is the memory a batch holds at the forward/backward boundary, on
any device and the CPU included; two batch sizes give bytes per image. The backward's transient buffers
(activation gradients, at most a few layers alive at once) are a fixed fraction on top.

With DALI on a GPU, its buffers (outside torch's allocator) come on top: `dali_buffers.py` has the formula.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import torch

from yolo_ddp.memory.dali_buffers import DaliBuffers

# fp32 state tensors per parameter: SGD momentum; AdamW's two moments; MuSGD (Ultralytics) keeps a Muon momentum
# and an SGD momentum for the matrices and conv filters it orthogonalises (ndim 2 or 4), one SGD momentum for the
# rest; auto picks AdamW or MuSGD, so it plans for the larger
# fp32 state tensors per parameter, as Ultralytics builds each optimizer (RMSProp with its momentum: 2).
OPTIMIZER_COPIES = {"SGD": lambda p: 1, "AdamW": lambda p: 2, "MuSGD": lambda p: 2 if p.ndim in (2, 4) else 1,
                    "Adam": lambda p: 2, "Adamax": lambda p: 2, "NAdam": lambda p: 2, "RAdam": lambda p: 2,
                    "RMSProp": lambda p: 2, "auto": lambda p: 2}
BACKWARD_TRANSIENT = 0.25  # activation-gradient buffers alive during backward, as a fraction of saved activations
GiB = 2**30


@dataclass(frozen=True)
class Estimate:
    """Bytes per rank. `bytes_per_image` (activations, DALI's buffers) scales with the micro-batch; the rest is
    fixed."""

    weights: int
    gradients: int
    optimizer: int
    ema: int
    ddp_buckets: int
    amp_weight_cache: int
    per_image: int  # saved activations + backward transients for one image at `imgsz`
    imgsz: int
    amp: str
    dali: DaliBuffers | None = None  # DALI's GPU buffers (data.backend dali on CUDA); None: no such cost

    @property
    def fixed(self) -> int:
        return (self.weights + self.gradients + self.optimizer + self.ema + self.ddp_buckets + self.amp_weight_cache
                + (self.dali.fixed if self.dali else 0))

    @property
    def bytes_per_image(self) -> int:
        """What one more image of micro-batch costs: its activations and, with DALI, its pipeline buffers."""
        return self.per_image + (self.dali.per_image if self.dali else 0)

    def total(self, batch_per_rank: int) -> int:
        return self.fixed + self.bytes_per_image * batch_per_rank

    def at_imgsz(self, imgsz: int) -> Estimate:
        """Activations scale with pixels: a smaller letterbox needs (imgsz / probed) ** 2 of them."""
        scaled = int(self.per_image * (imgsz / self.imgsz) ** 2)
        dali = self.dali.scaled(imgsz / self.imgsz) if self.dali else None
        return Estimate(**{**self.__dict__, "per_image": scaled, "imgsz": imgsz, "dali": dali})

    def components(self, batch_per_rank: int) -> dict[str, int]:
        parts = {"weights": self.weights, "gradients": self.gradients, "optimizer state": self.optimizer,
                 "EMA": self.ema, "DDP buckets": self.ddp_buckets, "AMP weight cache": self.amp_weight_cache,
                 f"activations ({batch_per_rank} img)": self.per_image * batch_per_rank}
        if self.dali:
            parts["DALI decoder state"] = self.dali.fixed
            parts[f"DALI buffers ({batch_per_rank} img)"] = self.dali.per_image * batch_per_rank
        return parts


def static_bytes(model: torch.nn.Module, optimizer: str, amp: str, world_size: int, ema: bool) -> dict[str, int]:
    trained = [p for p in model.parameters() if p.requires_grad]  # frozen ones get no grad/state
    n_params = sum(p.numel() for p in trained)
    held = sum(t.numel() * t.element_size() for t in [*model.parameters(), *model.buffers()])
    fp32 = 4
    return {
        "weights": held,
        "gradients": n_params * fp32,
        "optimizer": sum(p.numel() * fp32 * OPTIMIZER_COPIES[optimizer](p) for p in trained),
        "ema": held if ema else 0,
        "ddp_buckets": n_params * fp32 if world_size > 1 else 0,
        "amp_weight_cache": n_params * 2 if amp in ("fp16", "bf16") else 0,
    }


def saved_activation_bytes(model: torch.nn.Module, imgsz: int, batch: int, device: torch.device,
                           amp_dtype: torch.dtype | None) -> int:
    """Bytes autograd saves for the backward in one train-mode forward (distinct storages, no parameters)."""
    params = {p.untyped_storage().data_ptr() for p in model.parameters()}
    seen: dict[int, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        storage = t.untyped_storage()
        ptr = storage.data_ptr()
        if ptr not in params and ptr != 0:
            seen[ptr] = max(seen.get(ptr, 0), storage.nbytes())
        return t

    x = torch.zeros(batch, 3, imgsz, imgsz, device=device)
    autocast = torch.autocast(device.type, dtype=amp_dtype, enabled=amp_dtype is not None)
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t), autocast:
        out = model(x)
    del out  # frees the graph without a backward
    return sum(seen.values())


def activation_bytes_per_image(model: torch.nn.Module, imgsz: int, device: torch.device,
                               amp_dtype: torch.dtype | None) -> int:
    """Slope over batch sizes 1 and 2 (the intercept is per-batch bookkeeping), plus backward transients.

    Runs on a copy so BatchNorm running statistics of the real model are untouched.
    """
    probe = copy.deepcopy(model).to(device).train()
    try:
        one = saved_activation_bytes(probe, imgsz, 1, device, amp_dtype)
        two = saved_activation_bytes(probe, imgsz, 2, device, amp_dtype)
    finally:
        del probe
        if device.type == "cuda":
            torch.cuda.empty_cache()
    return int(max(two - one, one // 2) * (1 + BACKWARD_TRANSIENT))


def estimate(model: torch.nn.Module, imgsz: int, device: torch.device, amp: str, optimizer: str, world_size: int,
             ema: bool) -> Estimate:
    amp_dtype = {"fp16": torch.float16, "bf16": torch.bfloat16}.get(amp)
    static = static_bytes(model, optimizer, amp, world_size, ema)
    return Estimate(**static, per_image=activation_bytes_per_image(model, imgsz, device, amp_dtype),
                    imgsz=imgsz, amp=amp)
