"""The memory planner's per-rank estimate vs the real peak (`torch.cuda.max_memory_allocated`).

For each model, batch and precision: build the estimate (the planner's code path), then run real training
steps (Ultralytics loss, the optimizer, EMA) on random data and read the CUDA allocator's peak. On a machine
without CUDA only the estimates are printed.

    python bench/memory_vs_peak.py --models yolov8n.yaml,yolov8s.yaml,yolov8m.yaml --imgsz 640 --batches 8,16,32
"""

from __future__ import annotations

import argparse
import csv
import os
from datetime import date
from pathlib import Path

os.environ.setdefault("YOLO_OFFLINE", "1")

import torch  # noqa: E402
from ultralytics.utils.torch_utils import ModelEMA  # noqa: E402

from yolo_ddp.config import ModelConfig, TrainConfig  # noqa: E402
from yolo_ddp.engine.model import build_model, loss_criterion  # noqa: E402
from yolo_ddp.engine.optim import build_optimizer, choose_optimizer  # noqa: E402
from yolo_ddp.memory.estimate import GiB, estimate  # noqa: E402

NAMES = dict(enumerate(["missing_hole", "mouse_bite", "open_circuit", "short", "spur", "spurious_copper"]))


def measured_peak(cfg: str, imgsz: int, batch: int, amp: str, optimizer: str, device: torch.device) -> float:
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats(device)
    model = build_model(ModelConfig(cfg=cfg), NAMES, TrainConfig(), imgsz).to(device).train()
    criterion = loss_criterion(model)
    opt = build_optimizer(model, choose_optimizer(TrainConfig(optimizer=optimizer), len(NAMES), 100), 5e-4)
    ema = ModelEMA(model)
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(amp)
    scaler = torch.amp.GradScaler("cuda", enabled=amp == "fp16")
    n_boxes = 4 * batch
    targets = {"batch_idx": torch.arange(batch, device=device).repeat_interleave(4).float(),
               "cls": torch.randint(0, len(NAMES), (n_boxes, 1), device=device).float(),
               "bboxes": torch.rand(n_boxes, 4, device=device) * 0.5 + 0.25}
    for _ in range(3):  # optimizer state and allocator pools settle after the first steps
        img = torch.rand(batch, 3, imgsz, imgsz, device=device)
        with torch.autocast("cuda", dtype=dtype, enabled=dtype is not None):
            loss, _ = criterion(model(img), targets)
        scaler.scale(loss.sum()).backward()
        scaler.step(opt)
        scaler.update()
        opt.zero_grad(set_to_none=True)
        ema.update(model)
    torch.cuda.synchronize()
    peak = torch.cuda.max_memory_allocated(device)
    del model, opt, ema, criterion
    return peak / GiB


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", default="yolov8n.yaml,yolov8s.yaml,yolov8m.yaml")
    ap.add_argument("--imgsz", type=int, default=640)
    ap.add_argument("--batches", default="8,16,32")
    ap.add_argument("--amps", default="off,bf16")
    ap.add_argument("--optimizer", default="SGD")
    ap.add_argument("--out", default="bench/out/memory_vs_peak.csv")
    args = ap.parse_args()
    cuda = torch.cuda.is_available()
    device = torch.device("cuda", 0) if cuda else torch.device("cpu")
    rows = []
    for cfg in args.models.split(","):
        for amp in args.amps.split(","):
            model = build_model(ModelConfig(cfg=cfg), NAMES, TrainConfig(), args.imgsz).to(device)
            est = estimate(model, args.imgsz, device, amp, args.optimizer, world_size=1, ema=True)
            del model
            for batch in map(int, args.batches.split(",")):
                predicted = est.total(batch) / GiB
                peak = measured_peak(cfg, args.imgsz, batch, amp, args.optimizer, device) if cuda else float("nan")
                rows.append({"model": cfg, "amp": amp, "imgsz": args.imgsz, "batch": batch,
                             "estimate_GiB": round(predicted, 3), "peak_GiB": round(peak, 3),
                             "estimate/peak": round(predicted / peak, 3) if cuda else ""})
    name = torch.cuda.get_device_name(0) if cuda else "cpu (no CUDA: estimates only)"
    print(f"\n{date.today()}  {name}  optimizer {args.optimizer}, one rank")
    print(f"{'model':<14} {'amp':<5} {'batch':>5} {'estimate GiB':>13} {'peak GiB':>9} {'est/peak':>9}")
    for r in rows:
        print(f"{r['model']:<14} {r['amp']:<5} {r['batch']:>5} {r['estimate_GiB']:>13.3f} {r['peak_GiB']:>9.3f} "
              f"{r['estimate/peak']!s:>9}")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    with out.open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)


if __name__ == "__main__":
    main()
