"""Our trainer vs Ultralytics' `yolo train` on the same data, model yaml, imgsz, batch, epochs, AMP and workers.

Runs both as subprocesses on the synthetic PCB set, alternating A B A B (--pairs times), and reports:
- img/s: median over the intervals between consecutive epoch ends. The first epoch is warm-up and is
  excluded. Validation is off until the final epoch on both sides, and plots are off. Everything else a
  run spends per epoch counts: data loading, steps, checkpoints. Needs --epochs >= 3.
- time to first step: from launching the process to the end of its first optimizer step (imports,
  data indexing, model build, workers starting).
- data wait: the share of each step (epochs 2 on) the host spent waiting for the next batch; ours from
  steps.csv, Ultralytics' from its batch callbacks (its on_train_batch_start runs once the batch is there).
- GPU utilisation (CUDA only): NVML's mean over the steady epochs, sampled every 100 ms.
Augmentation is the same on both sides: letterbox, HSV and flip; no mosaic, scale or translate.
Where polars is not installed (the GPU image), Ultralytics' trainer reads its results.csv with the csv module
instead (it only stores it in the checkpoint); nothing else it runs here needs polars.
`--variant NAME=OVERRIDES` (repeatable) runs several configurations of our trainer in each round, each
with extra Hydra overrides, so the speed switches are measured against the same Ultralytics runs:
  --variant plain="train.channels_last=false train.fused_optimizer=false" --variant default=
Prints a table with each variant's ratio to the Ultralytics run of its round and writes
bench/out/train_throughput.csv.

  python bench/train_throughput.py --device cpu --imgsz 256 --batch 16 --epochs 3 --pairs 2
  python bench/train_throughput.py --device 0 --imgsz 640 --batch 64 --epochs 4 --amp bf16 --workers 16
  python bench/train_throughput.py --device cpu --imgsz 640 --image-size 1280 --batch 8 --epochs 3 --pairs 1 \
      --n-train 64 --workers 2 --backend torch --variant nocache= --variant cache=data.cache=ram
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
import threading
import time
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
OUT = REPO / "bench" / "out"

ULTRALYTICS_SNIPPET = r"""
import json, sys, time
from ultralytics import YOLO
try:
    import polars
except ImportError:  # not on the GPU image; Ultralytics reads its results.csv with it, for the checkpoint only
    import csv
    from ultralytics.engine.trainer import BaseTrainer
    def read_results_csv(trainer):  # what polars' read_csv(...).to_dict(as_series=False) gives for this CSV
        try:
            header, *rows = csv.reader(trainer.csv.read_text().splitlines())
        except (OSError, ValueError):
            return {}
        return {k: [float(v) for v in col] for k, col in zip(header, zip(*rows))} if rows else {}
    BaseTrainer.read_results_csv = read_results_csv
args = json.loads(sys.argv[1])
ends, walls, first, last, wait = [], [], [], [None], [0.0, 0.0]
def batch_start(trainer):
    if last[0] is not None and trainer.epoch >= 1:
        wait[0] += time.perf_counter() - last[0]
def batch_end(trainer):
    now = time.perf_counter()
    if last[0] is not None and trainer.epoch >= 1:
        wait[1] += now - last[0]
    last[0] = now
    first or first.append(time.time())
model = YOLO(args.pop("model"))
model.add_callback("on_train_epoch_start", lambda trainer: last.__setitem__(0, None))
model.add_callback("on_train_epoch_end", lambda trainer: (ends.append(time.perf_counter()), walls.append(time.time())))
model.add_callback("on_train_batch_start", batch_start)
model.add_callback("on_train_batch_end", batch_end)
model.train(**args)
print("EPOCH_ENDS " + json.dumps(ends))
print("EPOCH_ENDS_WALL " + json.dumps(walls))
print("FIRST_STEP " + json.dumps(first[0]))
print("DATA_WAIT " + json.dumps(wait))
"""


@dataclass
class Run:
    per_epoch: list[float]  # img/s between consecutive epoch ends
    first_step_s: float
    data_wait: float  # share of step time waiting for data, epochs 2 on
    steady: tuple[float, float]  # wall-clock window of the steady epochs, for GPU utilisation


class GpuUtilisation:
    """NVML utilisation samples of one GPU, every 100 ms, while a run goes on."""

    def __init__(self, device: str) -> None:
        self.samples: list[tuple[float, int]] = []
        self.handle = None
        if device != "cpu":
            import pynvml

            pynvml.nvmlInit()
            self.handle = pynvml.nvmlDeviceGetHandleByIndex(int(device))
            self.read = lambda: pynvml.nvmlDeviceGetUtilizationRates(self.handle).gpu
        self.stop = threading.Event()

    def __enter__(self) -> GpuUtilisation:
        if self.handle is not None:
            threading.Thread(target=self._sample, daemon=True).start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop.set()

    def _sample(self) -> None:
        while not self.stop.wait(0.1):
            self.samples.append((time.time(), self.read()))

    def mean(self, window: tuple[float, float]) -> float | None:
        inside = [u for t, u in self.samples if window[0] <= t <= window[1]]
        return round(statistics.mean(inside), 1) if inside else None


def ours(a: argparse.Namespace, data_yaml: Path, n_train: int, tag: str, extra: list[str]) -> Run:
    run_dir = OUT / "runs" / f"ours-{tag}"
    shutil.rmtree(run_dir, ignore_errors=True)  # a fresh run each time (a run dir with last.pt is refused)
    overrides = [
        "+experiment=pcb_defects", f"train={'cpu_quick' if a.device == 'cpu' else 'default'}",
        f"data.path={data_yaml}", f"data.imgsz={a.imgsz}", f"train.batch={a.batch}", f"train.nbs={a.batch}",
        f"train.epochs={a.epochs}", f"train.val_every={a.epochs + 1}", f"data.workers={a.workers}",
        f"train.amp={a.amp}", f"launcher.nproc_per_node={a.nproc}", "train.optimizer=SGD",
        f"data.cache_dir={OUT / 'cache'}", f"hydra.run.dir={run_dir}", "data.mosaic=0", "data.scale=0",
        "logger=csv", "logger.log_every_steps=1", f"data.backend={a.backend}", *extra,
    ]
    launched = time.time()
    proc = subprocess.Popen([sys.executable, "-m", "launcher", *overrides], cwd=REPO)
    first_step, epoch_rows = None, []  # wall time each metrics.csv row appeared
    while proc.poll() is None:  # steps.csv gets its first row right after the first optimizer step
        if first_step is None and _rows(run_dir / "steps.csv") >= 1:
            first_step = time.time() - launched
        if _rows(run_dir / "metrics.csv") > len(epoch_rows):
            epoch_rows.append(time.time())
        time.sleep(0.05)
    if proc.returncode:
        raise subprocess.CalledProcessError(proc.returncode, "python -m launcher")
    with (run_dir / "metrics.csv").open() as f:
        ends = [float(r["train_end_s"]) for r in csv.DictReader(f)]
    with (run_dir / "steps.csv").open() as f:
        steady = [r for r in csv.DictReader(f) if float(r["epoch"]) > 1]
    wait = sum(float(r["data_wait_ms"]) for r in steady) / max(sum(float(r["step_ms"]) for r in steady), 1e-9)
    # the last epoch's row is written after validation: the window ends at the one before it
    window = (epoch_rows[0], epoch_rows[-2]) if len(epoch_rows) >= 3 else (0.0, 0.0)
    return Run(per_epoch_rates(ends, n_train // a.batch * a.batch), first_step or float("nan"), wait, window)


def _rows(path: Path) -> int:
    try:
        return len(path.read_text().splitlines()) - 1
    except OSError:
        return 0


def theirs(a: argparse.Namespace, data_yaml: Path, n_train: int, tag: str, extra: list[str]) -> Run:
    args = {
        "model": a.model, "data": str(data_yaml), "imgsz": a.imgsz, "batch": a.batch, "nbs": a.batch,
        "epochs": a.epochs, "workers": a.workers, "device": a.device, "val": False, "plots": False,
        "amp": {"off": False, "fp16": True, "bf16": "bf16"}[a.amp], "mosaic": 0.0, "scale": 0.0, "translate": 0.0, "close_mosaic": 0,
        "optimizer": "SGD", "project": str(OUT / "runs"), "name": f"ultralytics-{tag}", "exist_ok": True,
        "verbose": False, "cache": False, "warmup_epochs": 0,
    }
    launched = time.time()
    proc = subprocess.run([sys.executable, "-c", ULTRALYTICS_SNIPPET, json.dumps(args)], check=True, cwd=OUT,
                          capture_output=True, text=True)
    found = {x.split(" ", 1)[0]: json.loads(x.split(" ", 1)[1]) for x in proc.stdout.splitlines()
             if x.startswith(("EPOCH_ENDS ", "EPOCH_ENDS_WALL ", "FIRST_STEP ", "DATA_WAIT "))}
    waited, stepped = found["DATA_WAIT"]
    walls = found["EPOCH_ENDS_WALL"]
    # its loader keeps the ragged tail batch, so an epoch is every image
    return Run(per_epoch_rates(found["EPOCH_ENDS"], n_train), found["FIRST_STEP"] - launched,
               waited / max(stepped, 1e-9), (walls[0], walls[-1]))


def per_epoch_rates(ends: list[float], images_per_epoch: int) -> list[float]:
    """img/s between consecutive epoch ends: everything a run spends per epoch (data, step, checkpoint,
    a loader's epoch-boundary refill) except validation, which both sides skip before the last epoch."""
    return [images_per_epoch / (b - a) for a, b in zip(ends[:-1], ends[1:], strict=False)]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cpu", help="cpu or a CUDA index such as 0")
    p.add_argument("--model", default="yolov8n.yaml")
    p.add_argument("--imgsz", type=int, default=256)
    p.add_argument("--image-size", type=int, default=0, help="side of the synthetic source JPEGs (0: imgsz)")
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--epochs", type=int, default=4)
    p.add_argument("--workers", type=int, default=1)
    p.add_argument("--amp", default="off", choices=["off", "bf16", "fp16"])
    p.add_argument("--nproc", type=int, default=1, help="our ranks (Ultralytics runs one process here)")
    p.add_argument("--n-train", type=int, default=256)
    p.add_argument("--pairs", type=int, default=2)
    p.add_argument("--backend", default="auto", choices=["auto", "torch", "dali"], help="our data backend")
    p.add_argument("--variant", action="append", default=[], metavar="NAME=OVERRIDES",
                   help="a configuration of our trainer: a name and space-separated Hydra overrides (repeatable)")
    a = p.parse_args()
    os.environ["YOLO_OFFLINE"] = "1"
    OUT.mkdir(parents=True, exist_ok=True)
    sys.path.insert(0, str(REPO))
    from yolo_ddp.data.synthetic import materialize

    source = a.image_size or a.imgsz
    data_yaml = materialize(OUT / "cache" / f"pcb-{a.n_train}-{source}", n_train=a.n_train, n_val=16,
                            img_size=source, seed=0)
    if bad := [v for v in a.variant if "=" not in v]:
        p.error(f"--variant {bad[0]!r}: use NAME=OVERRIDES, e.g. --variant plain=\"train.channels_last=false\" "
                "or --variant defaults= for none")
    variants = [v.split("=", 1) for v in a.variant] or [["yolo-ddp", ""]]
    runs = [(f"yolo-ddp:{name}" if a.variant else name, ours, extra.split()) for name, extra in variants]
    runs.append(("ultralytics", theirs, []))
    rows = []
    for pair in range(a.pairs):
        for name, fn, extra in runs:
            t0 = time.perf_counter()
            tag = f"{Path(a.model).stem}-{a.imgsz}-b{a.batch}-{a.amp}-p{pair}-{name.replace(':', '-')}"
            with GpuUtilisation(a.device) as gpu:
                run = fn(a, data_yaml, a.n_train, tag, extra)
            rows.append({"pair": pair, "trainer": name, "overrides": " ".join(extra), "device": a.device,
                         "model": a.model, "imgsz": a.imgsz, "batch": a.batch, "amp": a.amp,
                         "nproc": a.nproc if fn is ours else 1,
                         # intervals from the end of epoch 1 on: warm-up excluded
                         "img_per_s_median": round(statistics.median(run.per_epoch), 2),
                         "epochs_img_per_s": " ".join(f"{x:.1f}" for x in run.per_epoch),
                         "first_step_s": round(run.first_step_s, 1),
                         "data_wait_pct": round(100 * run.data_wait, 1),
                         "gpu_util_pct": gpu.mean(run.steady),
                         "wall_s": round(time.perf_counter() - t0, 1)})
    theirs_by_pair = {r["pair"]: r["img_per_s_median"] for r in rows if r["trainer"] == "ultralytics"}
    for r in rows:
        r["ratio_vs_ultralytics"] = round(r["img_per_s_median"] / theirs_by_pair[r["pair"]], 3)
    out = OUT / "train_throughput.csv"
    with out.open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    width = max(len(r["trainer"]) for r in rows)
    print(f"\n{'pair':>4} {'trainer':<{width}} {'nproc':>5} {'img/s (median over epochs)':>26} {'ratio':>6} "
          f"{'first step s':>12} {'data wait %':>11} {'GPU util %':>10} {'wall s':>8}")
    for r in rows:
        util = "-" if r["gpu_util_pct"] is None else r["gpu_util_pct"]
        print(f"{r['pair']:>4} {r['trainer']:<{width}} {r['nproc']:>5} {r['img_per_s_median']:>26} "
              f"{r['ratio_vs_ultralytics']:>6} {r['first_step_s']:>12} {r['data_wait_pct']:>11} {util:>10} "
              f"{r['wall_s']:>8}")
    for name, _, extra in runs[:-1]:
        ratios = [r["ratio_vs_ultralytics"] for r in rows if r["trainer"] == name]
        print(f"{name} ({' '.join(extra) or 'defaults'}) / ultralytics per round: {', '.join(f'{x:.2f}' for x in ratios)}")
    print(f"csv: {out}")


if __name__ == "__main__":
    main()
