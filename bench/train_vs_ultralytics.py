"""Our trainer vs Ultralytics' trainer on the same data, model, imgsz, batch and augmentation.

Runs both as subprocesses on the synthetic PCB set, alternating ours/theirs --pairs times, and
reports img/s from the interval between consecutive epoch ends (the first epoch is warm-up and
excluded; validation is off until the final epoch on both sides, plots off). Everything else a run
spends per epoch counts: data loading, steps, checkpoints. Needs --epochs >= 3. Prints a table and
writes bench/out/train_vs_ultralytics.csv.

  python bench/train_vs_ultralytics.py --device cpu --imgsz 256 --batch 16 --epochs 3
  python bench/train_vs_ultralytics.py --device 0 --imgsz 640 --batch 64 --epochs 4 --amp bf16
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
OUT = REPO / "bench" / "out"

ULTRALYTICS_SNIPPET = r"""
import json, sys, time
from ultralytics import YOLO
args = json.loads(sys.argv[1])
ends = []
model = YOLO(args.pop("model"))
model.add_callback("on_train_epoch_end", lambda trainer: ends.append(time.perf_counter()))
model.train(**args)
print("EPOCH_ENDS " + json.dumps(ends))
"""


def ours(a: argparse.Namespace, data_yaml: Path, n_train: int, tag: str) -> list[float]:
    run_dir = OUT / "runs" / f"ours-{tag}"
    shutil.rmtree(run_dir, ignore_errors=True)  # a fresh run each time (a run dir with last.pt is refused)
    overrides = [
        "+experiment=pcb_defects", f"train={'cpu_quick' if a.device == 'cpu' else 'default'}",
        f"data.path={data_yaml}", f"data.imgsz={a.imgsz}", f"train.batch={a.batch}", f"train.nbs={a.batch}",
        f"train.epochs={a.epochs}", f"train.val_every={a.epochs + 1}", f"data.workers={a.workers}",
        f"train.amp={a.amp}", f"launcher.nproc_per_node={a.nproc}", "train.optimizer=SGD",
        f"data.cache_dir={OUT / 'cache'}", f"hydra.run.dir={run_dir}",
    ]
    subprocess.run([sys.executable, "-m", "launcher", *overrides], check=True, cwd=REPO)
    with (run_dir / "metrics.csv").open() as f:
        ends = [float(r["train_end_s"]) for r in csv.DictReader(f)]
    return per_epoch_rates(ends, n_train // a.batch * a.batch)


def theirs(a: argparse.Namespace, data_yaml: Path, n_train: int, tag: str) -> list[float]:
    args = {
        "model": a.model, "data": str(data_yaml), "imgsz": a.imgsz, "batch": a.batch, "nbs": a.batch,
        "epochs": a.epochs, "workers": a.workers, "device": a.device, "val": False, "plots": False,
        "amp": {"off": False, "fp16": True, "bf16": "bf16"}[a.amp], "mosaic": 0.0, "scale": 0.0, "translate": 0.0, "close_mosaic": 0,
        "optimizer": "SGD", "project": str(OUT / "runs"), "name": f"ultralytics-{tag}", "exist_ok": True,
        "verbose": False, "cache": False, "warmup_epochs": 0,
    }
    proc = subprocess.run([sys.executable, "-c", ULTRALYTICS_SNIPPET, json.dumps(args)], check=True, cwd=OUT,
                          capture_output=True, text=True)
    line = next(x for x in proc.stdout.splitlines() if x.startswith("EPOCH_ENDS "))
    return per_epoch_rates(json.loads(line.split(" ", 1)[1]), n_train)  # its loader keeps the ragged tail batch


def per_epoch_rates(ends: list[float], images_per_epoch: int) -> list[float]:
    """img/s between consecutive epoch ends: everything a run spends per epoch (data, step, checkpoint,
    a loader's epoch-boundary refill) except validation, which both sides skip before the last epoch."""
    return [images_per_epoch / (b - a) for a, b in zip(ends[:-1], ends[1:], strict=False)]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cpu", help="cpu or a CUDA index such as 0")
    p.add_argument("--model", default="yolov8n.yaml")
    p.add_argument("--imgsz", type=int, default=256)
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--epochs", type=int, default=4)
    p.add_argument("--workers", type=int, default=1)
    p.add_argument("--amp", default="off", choices=["off", "bf16", "fp16"])
    p.add_argument("--nproc", type=int, default=1, help="our ranks (Ultralytics runs one process here)")
    p.add_argument("--n-train", type=int, default=256)
    p.add_argument("--pairs", type=int, default=1)
    a = p.parse_args()
    os.environ["YOLO_OFFLINE"] = "1"
    OUT.mkdir(parents=True, exist_ok=True)
    sys.path.insert(0, str(REPO))
    from yolo_ddp.data.synthetic import materialize

    data_yaml = materialize(OUT / "cache" / f"pcb-{a.n_train}-{a.imgsz}", n_train=a.n_train, n_val=16,
                            img_size=a.imgsz, seed=0)
    rows = []
    for pair in range(a.pairs):
        for name, fn in (("yolo-ddp", ours), ("ultralytics", theirs)):
            t0 = time.perf_counter()
            tag = f"{Path(a.model).stem}-{a.imgsz}-b{a.batch}-{a.amp}-p{pair}"
            per_epoch = fn(a, data_yaml, a.n_train, tag)
            steady = per_epoch  # intervals from the end of epoch 1 on: warm-up excluded
            rows.append({"pair": pair, "trainer": name, "device": a.device, "model": a.model, "imgsz": a.imgsz,
                         "batch": a.batch, "amp": a.amp, "nproc": a.nproc if name == "yolo-ddp" else 1,
                         "img_per_s_median": round(statistics.median(steady), 2),
                         "epochs_img_per_s": " ".join(f"{x:.1f}" for x in per_epoch),
                         "wall_s": round(time.perf_counter() - t0, 1)})
    ratios = [rows[i]["img_per_s_median"] / rows[i + 1]["img_per_s_median"] for i in range(0, len(rows), 2)]
    out = OUT / "train_vs_ultralytics.csv"
    with out.open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    print(f"\n{'pair':>4} {'trainer':<12} {'nproc':>5} {'img/s (median over epochs)':>26} {'wall s':>8}")
    for r in rows:
        print(f"{r['pair']:>4} {r['trainer']:<12} {r['nproc']:>5} {r['img_per_s_median']:>26} {r['wall_s']:>8}")
    print("ratio yolo-ddp / ultralytics per pair: " + ", ".join(f"{x:.2f}" for x in ratios))
    print(f"csv: {out}")


if __name__ == "__main__":
    main()
