"""What SyncBatchNorm costs per training step: per-rank BN (Ultralytics' DDP), torch's nn.SyncBatchNorm (GPU
only) and ours (`train.sync_bn_impl=collective`), on DDP-wrapped yolov8n, forward + backward, same inputs.

Ranks: NCCL with one GPU each where the machine has enough GPUs; otherwise every rank on GPU 0 (or the CPU)
over gloo, which prices the collectives higher than NCCL would but still shows torch's host syncs. Prints
each case's median step time and its ratio to per-rank BN; writes bench/out/sync_bn.csv.

    python bench/sync_bn.py --device cpu --imgsz 128 --batch 8            # gloo, 2 ranks
    python bench/sync_bn.py --device cuda --imgsz 640 --batch 8 --amp bf16   # the GPU session
"""

from __future__ import annotations

import argparse
import csv
import os
import statistics
import sys
import time
from contextlib import nullcontext
from pathlib import Path

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch.nn.parallel import DistributedDataParallel as DDP

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
os.environ.setdefault("YOLO_OFFLINE", "1")

from launcher.job.spawn import free_port  # noqa: E402
from yolo_ddp.config import ModelConfig, TrainConfig  # noqa: E402
from yolo_ddp.engine.model import build_model  # noqa: E402
from yolo_ddp.engine.sync_bn import convert_sync_batchnorm  # noqa: E402

OUT = REPO / "bench" / "out"


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _worker(rank: int, a: argparse.Namespace, port: int, backend: str, cases: list[str], out: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(max(1, (os.cpu_count() or 2) // a.world))
    dist.init_process_group(backend, rank=rank, world_size=a.world)
    device = torch.device("cpu") if a.device == "cpu" else \
        torch.device("cuda", rank if backend == "nccl" else 0)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    amp = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(a.amp)
    x = torch.rand(a.batch, 3, a.imgsz, a.imgsz, generator=torch.Generator().manual_seed(rank)).to(device)
    rows = []
    for case in cases:
        torch.manual_seed(0)
        model = build_model(ModelConfig(cfg=a.model), {0: "a", 1: "b"}, TrainConfig(), a.imgsz).to(device).train()
        if case != "off":
            model = convert_sync_batchnorm(model, device, case)
        ddp = DDP(model, device_ids=[device.index] if device.type == "cuda" else None)
        times = []
        for i in range(a.warmup + a.iters):
            _sync(device)
            t0 = time.perf_counter()
            with torch.autocast(device.type, dtype=amp) if amp else nullcontext():
                preds = ddp(x)
            preds = preds if isinstance(preds, dict) else preds[1]
            loss = sum(v.float().pow(2).mean() for v in preds.values() if torch.is_tensor(v))
            loss.backward()
            _sync(device)
            if i >= a.warmup:
                times.append(time.perf_counter() - t0)
            ddp.zero_grad(set_to_none=True)
        worst = torch.tensor([statistics.median(times)], device=device)
        dist.all_reduce(worst, op=dist.ReduceOp.MAX)  # the step waits for the slowest rank
        rows.append((case, worst.item()))
        del ddp, model
    if rank == 0:
        torch.save(rows, out)
    dist.destroy_process_group()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu", choices=["cpu", "cuda"])
    p.add_argument("--world", type=int, default=2)
    p.add_argument("--model", default="yolov8n.yaml")
    p.add_argument("--imgsz", type=int, default=640)
    p.add_argument("--batch", type=int, default=8, help="images per rank")
    p.add_argument("--amp", default="off", choices=["off", "bf16", "fp16"])
    p.add_argument("--iters", type=int, default=10)
    p.add_argument("--warmup", type=int, default=3)
    a = p.parse_args()
    backend = "nccl" if a.device == "cuda" and torch.cuda.device_count() >= a.world else "gloo"
    cases = ["off", "collective"] + (["torch"] if a.device == "cuda" else [])
    port = free_port()
    OUT.mkdir(parents=True, exist_ok=True)
    result = OUT / "sync_bn.pt"
    mp.spawn(_worker, args=(a, port, backend, cases, str(result)), nprocs=a.world, join=True)
    rows = torch.load(result)
    result.unlink()
    base = dict(rows)["off"]
    print(f"SyncBN cost: {a.model} imgsz {a.imgsz}, {a.batch} per rank x {a.world} ranks ({backend}, {a.device}), "
          f"amp {a.amp}; median of {a.iters} forward+backward steps, slowest rank")
    print(f"{'case':<12} {'step ms':>9} {'x per-rank BN':>14}")
    with (OUT / "sync_bn.csv").open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["case", "device", "backend", "world", "model", "imgsz", "batch_per_rank", "amp", "step_ms", "ratio"])
        for case, s in rows:
            print(f"{case:<12} {s * 1e3:9.1f} {s / base:14.2f}")
            w.writerow([case, a.device, backend, a.world, a.model, a.imgsz, a.batch, a.amp, f"{s * 1e3:.2f}",
                        f"{s / base:.3f}"])
    print(f"csv: {OUT / 'sync_bn.csv'}")


if __name__ == "__main__":
    main()
