"""One rank's process group as the trainer makes it, then one all-reduce: `torchrun --nproc_per_node=1 bench/nccl_check.py`.

NCCL on a GPU (bound to its device, as yolo_ddp/dist.py does), gloo on CPU. Prints backend, NCCL version,
init and all-reduce seconds; exits non-zero if the sum is wrong.
"""

from __future__ import annotations

import os
import time
from datetime import timedelta

import torch
import torch.distributed as tdist


def main() -> None:
    cuda = torch.cuda.is_available()
    local = int(os.environ.get("LOCAL_RANK", 0))
    device = torch.device("cuda", local) if cuda else torch.device("cpu")
    if cuda:
        torch.cuda.set_device(device)
    t0 = time.perf_counter()
    tdist.init_process_group("nccl" if cuda else "gloo", timeout=timedelta(seconds=60),
                             device_id=device if cuda else None)
    t1 = time.perf_counter()
    x = torch.full((1 << 20,), float(tdist.get_rank() + 1), device=device)
    tdist.all_reduce(x)
    if cuda:
        torch.cuda.synchronize()
    t2 = time.perf_counter()
    world = tdist.get_world_size()
    want = world * (world + 1) / 2
    nccl = ".".join(map(str, torch.cuda.nccl.version())) if cuda else "-"
    print(f"backend {tdist.get_backend()} world {world} nccl {nccl} init {t1 - t0:.2f} s all_reduce(4 MiB) "
          f"{t2 - t1:.3f} s sum {'ok' if float(x[0]) == want else f'WRONG {float(x[0])} != {want}'}")
    tdist.destroy_process_group()
    raise SystemExit(0 if float(x[0]) == want else 1)


if __name__ == "__main__":
    main()
