"""DALI's GPU memory: the memory plan's budget (yolo_ddp/memory/dali_buffers.py) vs what DALI takes.

Builds what the trainer builds on a GPU (the validation loader at twice the batch, the mosaic training stream),
pulls batches from both, and reads the device's used memory minus what torch's allocator reserved: the rest
is DALI's (its pools, decoder state, prefetched batches). Without CUDA it prints the budget only.

    python bench/dali_memory.py --imgsz 640 --batch 32 --prefetch 2
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

os.environ.setdefault("YOLO_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # this checkout's yolo_ddp, not an installed one

import torch  # noqa: E402

from yolo_ddp.data.dali import DaliSettings, DaliTrainStream, DaliValLoader  # noqa: E402
from yolo_ddp.data.dali_source import Augment  # noqa: E402
from yolo_ddp.data.dataset import build_index  # noqa: E402
from yolo_ddp.data.spec import load_data_spec  # noqa: E402
from yolo_ddp.data.synthetic import materialize  # noqa: E402
from yolo_ddp.memory.dali_buffers import DaliBuffers, typical_source_pixels  # noqa: E402
from yolo_ddp.plan import loader_batches_per_epoch  # noqa: E402

MiB = 2**20


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--imgsz", type=int, default=640)
    ap.add_argument("--image-size", type=int, default=640, help="side of the synthetic source JPEGs")
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--prefetch", type=int, default=2)
    ap.add_argument("--batches", type=int, default=12)
    ap.add_argument("--n-images", type=int, default=256)
    ap.add_argument("--cache", default=".cache/yolo_ddp")
    args = ap.parse_args()
    yaml = materialize(Path(args.cache) / "synthetic" / f"dalimem-{args.n_images}-{args.image_size}",
                       args.n_images, args.n_images // 4, args.image_size)
    spec = load_data_spec(yaml)
    train = build_index(spec.train, spec.nc, Path(args.cache) / "index", "train")
    val = build_index(spec.val, spec.nc, Path(args.cache) / "index", "val")
    budget = DaliBuffers(typical_source_pixels(train.shapes), args.imgsz, args.prefetch, mosaic=True, scale=0.5)
    need = budget.fixed + budget.per_image * args.batch
    print(f"budget: {need / MiB:.0f} MiB = {budget.fixed / MiB:.0f} fixed + {args.batch} x "
          f"{budget.per_image / MiB:.1f} MiB per image (prefetch {args.prefetch}, imgsz {args.imgsz}, sources "
          f"{args.image_size} px)")
    if not torch.cuda.is_available():
        print("measured: - (no CUDA: DALI's GPU memory cannot be read here)")
        return
    torch.cuda.init()
    free0, total = torch.cuda.mem_get_info(0)
    reserved0 = torch.cuda.memory_reserved(0)
    settings = DaliSettings(0, prefetch=args.prefetch)
    val_loader = DaliValLoader(val, args.imgsz, args.batch * 2, 0, 1, settings)
    for _ in val_loader:
        pass
    per_epoch = loader_batches_per_epoch(len(train), 1, args.batch)
    stream = iter(DaliTrainStream(train, args.imgsz, args.batch, per_epoch, 0, 1, 0, Augment(), settings,
                                  mosaic_until=10**9))
    for _ in range(args.batches):
        next(stream)
    torch.cuda.synchronize()
    free1, _ = torch.cuda.mem_get_info(0)
    torch_side = torch.cuda.memory_reserved(0) - reserved0
    dali = (free0 - free1) - torch_side
    print(f"measured: {dali / MiB:.0f} MiB taken outside torch's allocator (device use grew "
          f"{(free0 - free1) / MiB:.0f} MiB, torch reserved {torch_side / MiB:.0f} MiB); budget/measured "
          f"{need / max(dali, 1):.2f}")


if __name__ == "__main__":
    main()
