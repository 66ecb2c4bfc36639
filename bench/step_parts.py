"""The speed switches one at a time, outside the trainer: forward + backward with NCHW vs NHWC
(channels_last) weights, and the SGD step with torch's default kernel (foreach on CUDA, a loop on CPU)
vs the fused one. Alternates the cases, reports each one's median, writes bench/out/step_parts.csv.

    python bench/step_parts.py --device cpu --imgsz 256 --batch 16
    python bench/step_parts.py --device cuda --imgsz 640 --batch 64 --amp bf16
"""

from __future__ import annotations

import argparse
import copy
import csv
import os
import statistics
import sys
import time
from contextlib import nullcontext
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
os.environ.setdefault("YOLO_OFFLINE", "1")

from yolo_ddp.config import ModelConfig, TrainConfig  # noqa: E402
from yolo_ddp.engine.model import build_model  # noqa: E402
from yolo_ddp.engine.optim import OptimizerChoice, build_optimizer  # noqa: E402


def timed(fn, device: torch.device) -> float:
    if device.type == "cuda":
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    fn()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - t0


def measure(cfg: str, a: argparse.Namespace, device: torch.device, autocast) -> dict[str, list[float]]:
    torch.manual_seed(0)
    nchw = build_model(ModelConfig(cfg=cfg), {0: "a", 1: "b"}, TrainConfig(), a.imgsz).to(device).train()
    nhwc = copy.deepcopy(nchw).to(memory_format=torch.channels_last)
    x = torch.rand(a.batch, 3, a.imgsz, a.imgsz, device=device)

    def fwd_bwd(model: torch.nn.Module) -> None:
        with autocast:
            out = model(x)
        out = out.values() if isinstance(out, dict) else out
        sum(t.float().mean() for t in out if torch.is_tensor(t)).backward()

    for p in nchw.parameters():
        p.grad = torch.randn_like(p)
    foreach, fused = (build_optimizer(nchw, OptimizerChoice("SGD", 1e-6, 0.9), 5e-4, fused=f) for f in (False, True))
    cases = {"forward+backward NCHW": lambda: fwd_bwd(nchw), "forward+backward channels_last": lambda: fwd_bwd(nhwc),
             "SGD step default kernel": foreach.step, "SGD step fused": fused.step}
    for fn in cases.values():  # warm-up: allocator, cuDNN/oneDNN kernel choice, optimizer state
        fn()
    times: dict[str, list[float]] = {k: [] for k in cases}
    for _ in range(a.rounds):  # alternate the cases, so drift hits both sides of each comparison
        for name, fn in cases.items():
            times[name].append(timed(fn, device))
    return times


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cpu")
    p.add_argument("--models", default="yolov8n.yaml,yolov8s.yaml")
    p.add_argument("--imgsz", type=int, default=256)
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--amp", default="off", choices=["off", "bf16"])
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--threads", type=int, default=2, help="torch threads on CPU")
    a = p.parse_args()
    device = torch.device(a.device)
    torch.set_num_threads(a.threads)
    autocast = torch.autocast(device.type, dtype=torch.bfloat16) if a.amp == "bf16" else nullcontext()
    rows = []
    for cfg in a.models.split(","):
        times = measure(cfg, a, device, autocast)
        rows += [{"model": cfg, "device": a.device, "imgsz": a.imgsz, "batch": a.batch, "amp": a.amp,
                  "case": name, "median_ms": round(1e3 * statistics.median(ts), 2)} for name, ts in times.items()]
    print(f"\n{'model':<14} {'case':<32} {'median ms':>10} {'vs first of pair':>17}")
    for i, r in enumerate(rows):
        base = rows[i - i % 2]["median_ms"]
        print(f"{r['model']:<14} {r['case']:<32} {r['median_ms']:>10} {r['median_ms'] / base:>16.2f}x")
    out = REPO / "bench" / "out" / "step_parts.csv"
    out.parent.mkdir(parents=True, exist_ok=True)
    with out.open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    print(f"csv: {out}")


if __name__ == "__main__":
    main()
