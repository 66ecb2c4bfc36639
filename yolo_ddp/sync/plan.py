"""Choose the gradient sync strategy and bucket size from the job topology and the cost model.

`auto` runs the cost model (`yolo_ddp.sync.cost`) for plain all-reduce, bf16/fp16 compression
(bf16 where every GPU has native bf16, compute capability >= 8.0; fp16 otherwise) and PowerSGD,
and keeps all-reduce unless another strategy saves at least `min_gain` of the predicted step
(PowerSGD must also beat compression by that much). Buckets grow on slow links, where fewer,
larger all-reduces waste less time on per-call latency and on per-bucket compression overhead.
Accumulation micro-steps never sync on any link: the loop runs them under `DDP.no_sync()`.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field

from yolo_ddp.config import SyncConfig
from yolo_ddp.sync.cost import Workload, estimate, link_speed, peak_tflops
from yolo_ddp.topology.model import JobTopology, NodeTopology

DEFAULT_BUCKET_MB = 25.0  # torch's own default
# P2P between GeForce 40-series cards is reported but hangs or corrupts data on many drivers/boards.
P2P_BROKEN_GPUS = re.compile(r"GeForce RTX 40\d0")


@dataclass(frozen=True)
class SyncPlan:
    strategy: str  # allreduce | bf16_compress | fp16_compress | powersgd
    requested: str
    bucket_cap_mb: float
    worst_link: str
    reasons: tuple[str, ...]
    inputs: dict = field(default_factory=dict)
    estimates: tuple[dict, ...] = ()

    def describe(self) -> str:
        lines = [f"Gradient sync: {self.strategy} (sync.strategy={self.requested}), buckets {self.bucket_cap_mb:g} MB,"
                 f" worst ring hop {self.worst_link}"]
        lines += [f"  why: {r}" for r in self.reasons]
        lines += [f"  input {k:<22} {v}" for k, v in self.inputs.items()]
        for e in self.estimates:
            lines.append(f"  model {e['strategy']:<14} sends {e['sent_bytes'] / 2**20:8.2f} MiB  comm {e['comm_ms']:8.2f}"
                         f" ms  exposed {e['exposed_ms']:7.2f} ms  codec {e['codec_ms']:6.2f} ms  step "
                         f"{e['step_ms']:8.2f} ms")
        return "\n".join(lines)


def compression_dtype(job: JobTopology) -> str:
    ccs = [g.compute_capability for n in job.nodes for g in n.gpus]
    return "bf16_compress" if ccs and all(cc and cc[0] >= 8 for cc in ccs) else "fp16_compress"


def _bucket_mb(cfg: SyncConfig, job: JobTopology, grad_bytes: int) -> tuple[float, str]:
    if cfg.bucket_cap_mb > 0:
        return cfg.bucket_cap_mb, f"buckets {cfg.bucket_cap_mb:g} MB as set (sync.bucket_cap_mb)"
    link = job.worst_link()
    if link.kind in ("nvlink", "cpu", "none"):
        mb, why = DEFAULT_BUCKET_MB, "fast or local link: torch's default buckets keep the most overlap"
    elif link.kind == "pcie" and job.peer_access() is not False:
        mb, why = 2 * DEFAULT_BUCKET_MB, "PCIe (peer access yes or unknown): larger buckets, fewer latency-bound calls"
    else:
        mb, why = 4 * DEFAULT_BUCKET_MB, "no peer access or a network hop: largest buckets, fewest calls"
    return min(mb, max(DEFAULT_BUCKET_MB, grad_bytes / 2**20)), why


def refuse_powersgd_with_fp16(strategy: str, amp: str, requested_amp: str = "fp16") -> None:
    """PowerSGD's error feedback (torch's powerSGD_hook) adds last step's residual to each bucket and keeps
    the new one without a finite check: one fp16 GradScaler overflow leaves the residual inf/NaN for good,
    and every later step overflows and is skipped. bf16 has no scaler and (practically) no overflow."""
    if strategy != "powersgd" or amp != "fp16":
        return
    resolved = "" if requested_amp == "fp16" else f" (train.amp={requested_amp} resolved to fp16 on this hardware)"
    raise ValueError(
        f"Config keys 'sync.strategy' and 'train.amp': sync.strategy=powersgd cannot train with fp16 AMP{resolved}. "
        f"torch's PowerSGD keeps an error-feedback residual that one GradScaler overflow turns into inf/NaN "
        f"for the rest of the run, so every later step would be skipped. Use train.amp=bf16 (GPUs of compute "
        f"capability 8.0+) or train.amp=off with PowerSGD, or keep fp16 and pick sync.strategy=fp16_compress "
        f"or sync.strategy=auto."
    )


def choose_sync(cfg: SyncConfig, job: JobTopology, w: Workload, world_size: int, device_type: str,
                amp: str = "off", requested_amp: str = "") -> SyncPlan:
    """`amp` is the run's resolved AMP mode (`requested_amp`, train.amp as set, only words the refusal)."""
    refuse_powersgd_with_fp16(cfg.strategy, amp, requested_amp or amp)
    link = job.worst_link()
    speed = link_speed(link, job, cfg.network_gbps)
    tflops, tflops_why = peak_tflops(job)
    bucket_mb, bucket_why = _bucket_mb(cfg, job, w.grad_bytes)
    compress = compression_dtype(job)
    powersgd_ok = amp != "fp16"
    candidates = ["allreduce", compress] + (["powersgd"] if powersgd_ok else [])
    if cfg.strategy != "auto" and cfg.strategy not in candidates:
        candidates.append(cfg.strategy)
    est = {s: estimate(s, w, world_size, speed, tflops, cfg.mfu, bucket_mb, device_type, cfg.powersgd_rank)
           for s in candidates}
    inputs = {
        "world_size": world_size, "nodes": job.nnodes, "worst_link": link.label,
        "link_bandwidth_GBps": round(speed.gbps, 2), "link_why": speed.why, "latency_us": speed.alpha_s * 1e6,
        "grad_MiB": round(w.grad_bytes / 2**20, 2), "gflops_per_image": round(w.gflops_per_image, 2),
        "batch_per_rank": w.batch_per_rank, "compute": tflops_why, "mfu": cfg.mfu,
    }
    if world_size < 2:
        return SyncPlan("allreduce", cfg.strategy, bucket_mb, link.label, ("one rank: nothing to sync",), inputs)
    reasons = [f"ring over {world_size} ranks on {job.nnodes} node(s); slowest hop {link.label}: {speed.why}",
               bucket_why, "accumulation micro-steps never sync (the loop runs them under no_sync())"]
    base = est["allreduce"]
    reasons.append(f"all-reduce of {w.grad_bytes / 2**20:.1f} MiB takes {base.comm_ms:.2f} ms; "
                   f"{base.exposed_ms:.2f} ms of it outlasts the backward (predicted step {base.step_ms:.1f} ms)")
    if cfg.strategy != "auto":
        chosen = cfg.strategy
        reasons.append(f"strategy {chosen} set by sync.strategy (the model predicts "
                       f"{est[chosen].step_ms:.1f} ms vs {base.step_ms:.1f} ms for allreduce)")
    else:
        chosen = "allreduce"
        threshold = cfg.min_gain * base.step_ms
        if not powersgd_ok:
            reasons.append("PowerSGD not considered: its error-feedback residual never recovers from an fp16 "
                           "GradScaler overflow (train.amp resolved to fp16)")
        for s in candidates[1:]:
            gain = est[chosen].step_ms - est[s].step_ms
            if gain >= threshold:
                reasons.append(f"{s} saves {gain:.2f} ms per step over {chosen} (>= {cfg.min_gain:.0%} of the step)")
                chosen = s
            elif gain <= 0:
                reasons.append(f"{s} would cost {-gain:.2f} ms more per step than {chosen} (its encode/decode "
                               f"outweighs the bytes it saves)")
            else:
                reasons.append(f"{s} would save {gain:.2f} ms per step over {chosen}: under {cfg.min_gain:.0%} "
                               f"of the step, not worth its rounding/overhead")
    return SyncPlan(chosen, cfg.strategy, bucket_mb, link.label, tuple(reasons), inputs,
                    tuple(e.as_dict() for e in est.values()))


def nccl_env_for(node: NodeTopology) -> dict[str, tuple[str, str]]:
    """NCCL variables the job's GPUs on this node need (`node`: the job's view), each with the reason.

    Pairs without peer access need nothing: NCCL checks every pair itself and stages only those through host
    memory, while NCCL_P2P_DISABLE=1 would do that to every pair, NVLinked ones included. Only GPUs whose
    P2P is reported but broken get it switched off.
    """
    env = {}
    if node.n_gpus > 1 and any(P2P_BROKEN_GPUS.search(g.name) for g in node.gpus):
        env["NCCL_P2P_DISABLE"] = ("1", "GeForce RTX 40-series P2P is known to hang or corrupt data")
    return env


def apply_nccl_env(node: NodeTopology, backend: str) -> list[str]:
    """Set what `nccl_env_for` asks before the process group starts; a value the user set always wins."""
    if backend == "gloo" or node.n_gpus == 0:
        return []
    said = []
    for key, (value, why) in nccl_env_for(node).items():
        if key in os.environ:
            said.append(f"{key}={os.environ[key]} kept as set (the probe suggests {value}: {why})")
        else:
            os.environ[key] = value
            said.append(f"{key}={value}: {why}")
    return said
