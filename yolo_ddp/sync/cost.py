"""Cost model: is gradient sync exposed in the step, and would compression hide it?

Per optimizer step of a ring all-reduce over n ranks with B gradient bytes in k buckets:

    t_comm  = 2 (n-1)/n * B / bw  +  k * 2 (n-1) * alpha              (bandwidth + latency terms)
    t_comp  = 3 * GFLOPs/image * batch_per_rank / (peak_TFLOPs * mfu)  (forward + 2x for backward)
    exposed = max(0, t_comm - overlap * t_backward),  t_backward = 2/3 t_comp
    t_step  = t_comp + exposed + t_codec

DDP overlaps bucket all-reduces with the backward pass, so only the part of t_comm that outlasts the
backward costs time (`overlap` < 1 because the last bucket starts after the backward ends).
bf16/fp16 compression halves B and adds two casts (t_codec = 2B / memory bandwidth). PowerSGD sends
(rows + cols) * rank floats per gradient matrix instead of rows * cols, but pays a few small matmuls
and an orthogonalisation per matrix (t_codec: FLOPs at low efficiency plus per-kernel overhead) and
keeps 1-D tensors uncompressed. `bw` is the slowest hop of the ring (`JobTopology.worst_link`):
NVLink at 25 GB/s per link per direction (NVLink 2-4), PCIe by generation and width times a factor
for how far the pair is (PIX ... SYS) and whether it has peer access (without it, data is staged
through host memory), the network at `network_gbps`, gloo over host memory at `CPU_GLOO_GBPS`.

The inputs are printed with the choice; `bench/comm.py` measures the real bandwidth beside this
model's prediction. Compression wins only where t_comm outlasts the backward by more than
`min_gain` of the step (Agarwal et al., MLSys 2022, find that rare on data-centre links).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

from yolo_ddp.topology.model import JobTopology, Link

NVLINK_GBPS_PER_LINK = 25.0  # GB/s per direction
PCIE_GBPS_X16 = {1: 4.0, 2: 8.0, 3: 16.0, 4: 32.0, 5: 64.0, 6: 128.0}  # GB/s per direction, raw
PCIE_DEFAULT_GEN = 4
PCIE_EFFICIENCY = 0.8  # protocol overhead
PCIE_LEVEL_FACTOR = {"PIX": 1.0, "PXB": 0.95, "PHB": 0.85, "NODE": 0.75, "SYS": 0.5}
NO_P2P_FACTOR = 0.5  # staged through host memory: two copies per hop
NET_EFFICIENCY = 0.8
CPU_GLOO_GBPS = 1.0  # gloo over loopback TCP between processes on one host (bench/comm.py measures it)
ALPHA_S = {"nvlink": 5e-6, "pcie": 10e-6, "net": 30e-6, "cpu": 50e-6, "none": 0.0}
MEMORY_GBPS = {"cuda": 1000.0, "cpu": 10.0}  # for the compression casts
CPU_TFLOPS_PER_RANK = 0.05
DEFAULT_GPU_TFLOPS = 100.0
# Dense bf16/fp16 tensor-core peaks (TFLOPs), matched by substring of the NVML name, first match wins.
GPU_TFLOPS = (("H200", 989.0), ("H100", 989.0), ("GH200", 989.0), ("B200", 2250.0), ("A100", 312.0),
              ("L40S", 362.0), ("L40", 181.0), ("L4", 121.0), ("A6000", 155.0), ("A40", 150.0),
              ("A10", 125.0), ("5090", 210.0), ("4090", 165.0), ("3090", 71.0), ("V100", 125.0),
              ("2080 Ti", 54.0), ("T4", 65.0))
OVERLAP = 0.7
POWERSGD_KERNEL_S = 20e-6  # launch + sync per small kernel; ~6 per matrix
POWERSGD_MFU = 0.1  # skinny matmuls and QR run far below peak


@dataclass(frozen=True)
class Workload:
    """What one optimizer step of this model moves and computes, per rank."""

    grad_bytes: int  # fp32 gradients of the trainable parameters
    gflops_per_image: float  # forward pass at the training image size
    batch_per_rank: int
    matrices: tuple[tuple[int, int], ...] = ()  # gradient shapes as PowerSGD flattens them (rows, cols)
    vector_bytes: int = 0  # 1-D gradients (biases, norms): PowerSGD sends them uncompressed

    @classmethod
    def of_model(cls, model, gflops_per_image: float, batch_per_rank: int) -> Workload:
        params = [p for p in model.parameters() if p.requires_grad]
        mats = tuple((p.shape[0], p.numel() // p.shape[0]) for p in params if p.dim() > 1)
        vec = sum(p.numel() * 4 for p in params if p.dim() <= 1)
        return cls(sum(p.numel() * 4 for p in params), gflops_per_image, batch_per_rank, mats, vec)


@dataclass(frozen=True)
class LinkSpeed:
    gbps: float  # GB/s per direction, effective
    alpha_s: float
    why: str


def link_speed(link: Link, job: JobTopology, network_gbps: float) -> LinkSpeed:
    """Effective bandwidth of the ring's slowest hop."""
    if link.kind == "nvlink":
        bw = NVLINK_GBPS_PER_LINK * link.nvlinks
        return LinkSpeed(bw, ALPHA_S["nvlink"], f"{link.nvlinks} NVLinks x {NVLINK_GBPS_PER_LINK:g} GB/s")
    if link.kind == "net":
        bw = network_gbps / 8 * NET_EFFICIENCY
        return LinkSpeed(bw, ALPHA_S["net"], f"network {network_gbps:g} Gb/s x {NET_EFFICIENCY}")
    if link.kind == "cpu":
        return LinkSpeed(CPU_GLOO_GBPS, ALPHA_S["cpu"], f"gloo over host memory ~{CPU_GLOO_GBPS:g} GB/s")
    if link.kind == "pcie":
        gpus = [g for n in job.nodes for g in n.gpus]
        gens = [g.pcie_gen for g in gpus if g.pcie_gen]
        widths = [g.pcie_width for g in gpus if g.pcie_width]
        gen, width = (min(gens) if gens else PCIE_DEFAULT_GEN), (min(widths) if widths else 16)
        bw = PCIE_GBPS_X16.get(gen, 32.0) * width / 16 * PCIE_EFFICIENCY * PCIE_LEVEL_FACTOR[link.level]
        why = f"PCIe gen{gen} x{width}{'' if gens else ' (assumed)'} at {link.level}"
        if job.peer_access() is False:
            bw *= NO_P2P_FACTOR
            why += ", no peer access (via host memory)"
        return LinkSpeed(bw, ALPHA_S["pcie"], why)
    return LinkSpeed(math.inf, 0.0, "single GPU: nothing to sync")


def peak_tflops(job: JobTopology) -> tuple[float, str]:
    if job.is_cpu:
        return CPU_TFLOPS_PER_RANK, f"CPU rank ~{CPU_TFLOPS_PER_RANK * 1e3:g} GFLOP/s"
    names = [g.name for n in job.nodes for g in n.gpus]
    for key, tflops in GPU_TFLOPS:
        if names and all(key in name for name in names):
            return tflops, f"{key} {tflops:g} TFLOPs peak"
    return DEFAULT_GPU_TFLOPS, f"GPU model unknown: {DEFAULT_GPU_TFLOPS:g} TFLOPs assumed"


def ring_time_s(nbytes: float, n: int, speed: LinkSpeed, buckets: int) -> float:
    if n < 2:
        return 0.0
    return 2 * (n - 1) / n * nbytes / (speed.gbps * 1e9) + buckets * 2 * (n - 1) * speed.alpha_s


def powersgd_bytes(w: Workload, rank: int) -> int:
    return sum((r + c) * min(rank, r, c) * 4 for r, c in w.matrices) + w.vector_bytes


def powersgd_codec_s(w: Workload, rank: int, tflops: float) -> float:
    flops = sum(6 * r * c * min(rank, r, c) for r, c in w.matrices)  # P = MQ, Q = M^T P, error feedback
    return flops / (tflops * 1e12 * POWERSGD_MFU) + 6 * POWERSGD_KERNEL_S * len(w.matrices)


@dataclass(frozen=True)
class Estimate:
    strategy: str
    sent_bytes: int
    comm_ms: float
    exposed_ms: float
    codec_ms: float
    step_ms: float

    def as_dict(self) -> dict:
        return asdict(self)


def estimate(strategy: str, w: Workload, n: int, speed: LinkSpeed, tflops: float, mfu: float,
             bucket_mb: float, device_type: str, powersgd_rank: int) -> Estimate:
    compute_s = 3 * w.gflops_per_image * 1e9 * w.batch_per_rank / (tflops * 1e12 * mfu)
    if strategy == "allreduce":
        sent, codec = w.grad_bytes, 0.0
    elif strategy in ("bf16_compress", "fp16_compress"):
        sent, codec = w.grad_bytes // 2, 2 * w.grad_bytes / (MEMORY_GBPS[device_type] * 1e9)
    elif strategy == "powersgd":
        sent, codec = powersgd_bytes(w, powersgd_rank), powersgd_codec_s(w, powersgd_rank, tflops)
    else:
        raise ValueError(f"unknown strategy {strategy!r}")
    buckets = max(1, math.ceil(sent / (bucket_mb * 2**20)))
    comm = ring_time_s(sent, n, speed, buckets)
    exposed = max(0.0, comm - OVERLAP * (2 / 3) * compute_s)
    return Estimate(strategy, sent, comm * 1e3, exposed * 1e3, codec * 1e3, (compute_s + exposed + codec) * 1e3)
