"""All-reduce bandwidth of the current group beside the cost model's prediction.

    python bench/comm.py                      # spawns 2 gloo ranks on this machine (CPU)
    torchrun --nproc_per_node=8 bench/comm.py # one rank per GPU, NCCL

Prints one row per message size (algorithm bandwidth = bytes / time, bus bandwidth = algbw * 2(n-1)/n,
what NCCL's tests report) and the model's predicted time for the same bytes over the probed worst link;
`--csv` also writes the table.
"""

from __future__ import annotations

import argparse
import csv
import os
import sys
import time
from pathlib import Path

import torch
import torch.distributed as tdist
import torch.multiprocessing as mp

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from yolo_ddp.sync.cost import link_speed, ring_time_s  # noqa: E402
from yolo_ddp.topology.model import JobTopology  # noqa: E402
from yolo_ddp.topology.probe import probe_node  # noqa: E402

SIZES_MIB = (1, 4, 16, 64)


def measure(nbytes: int, device: torch.device, iters: int) -> float:
    t = torch.ones(nbytes // 4, dtype=torch.float32, device=device)
    for _ in range(2):
        tdist.all_reduce(t)
    if device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(iters):
        tdist.all_reduce(t)
    if device.type == "cuda":
        torch.cuda.synchronize()
    return (time.perf_counter() - start) / iters


def run(rank: int, world: int, args: argparse.Namespace) -> None:
    if not tdist.is_initialized():
        tdist.init_process_group("nccl" if torch.cuda.is_available() else "gloo", rank=rank, world_size=world)
    device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0))) if torch.cuda.is_available() else \
        torch.device("cpu")
    if device.type == "cuda":
        torch.cuda.set_device(device)
    else:
        torch.set_num_threads(1)
    node = probe_node(allow_cuda_init=False)
    job = JobTopology(nodes=(node,), ranks_per_node=world)
    link = job.worst_link()
    speed = link_speed(link, job, args.network_gbps)
    rows = []
    for mib in args.sizes:
        nbytes = int(mib * 2**20)
        t = measure(nbytes, device, args.iters)
        pred = ring_time_s(nbytes, world, speed, buckets=1)
        bus = nbytes / t * 2 * (world - 1) / world / 1e9
        rows.append({"MiB": mib, "ranks": world, "backend": tdist.get_backend(), "link": link.label,
                     "time_ms": round(t * 1e3, 3), "algbw_GBps": round(nbytes / t / 1e9, 3),
                     "busbw_GBps": round(bus, 3), "model_time_ms": round(pred * 1e3, 3),
                     "model_link_GBps": round(speed.gbps, 3)})
    if rank == 0:
        print(f"all-reduce, {world} ranks, {tdist.get_backend()}, worst link {link.label} ({speed.why})")
        print(f"{'MiB':>6} {'time ms':>9} {'algbw GB/s':>11} {'busbw GB/s':>11} {'model ms':>9} {'model GB/s':>11}")
        for r in rows:
            print(f"{r['MiB']:>6} {r['time_ms']:>9.3f} {r['algbw_GBps']:>11.3f} {r['busbw_GBps']:>11.3f} "
                  f"{r['model_time_ms']:>9.3f} {r['model_link_GBps']:>11.3f}")
        if args.csv:
            with open(args.csv, "w", newline="") as f:
                w = csv.DictWriter(f, fieldnames=list(rows[0]))
                w.writeheader()
                w.writerows(rows)
    tdist.barrier()
    tdist.destroy_process_group()


def _spawned(rank: int, world: int, port: int, args: argparse.Namespace) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    run(rank, world, args)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--nproc", type=int, default=2, help="ranks to spawn when not under torchrun")
    p.add_argument("--sizes", type=float, nargs="+", default=list(SIZES_MIB), help="message sizes, MiB")
    p.add_argument("--iters", type=int, default=10)
    p.add_argument("--network-gbps", type=float, default=25.0)
    p.add_argument("--csv", default="")
    args = p.parse_args()
    if "RANK" in os.environ:  # under torchrun
        run(int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"]), args)
        return
    from launcher.job.spawn import free_port

    mp.spawn(_spawned, args=(args.nproc, free_port(), args), nprocs=args.nproc, join=True)


if __name__ == "__main__":
    main()
