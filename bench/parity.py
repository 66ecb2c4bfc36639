"""Accuracy parity: does our trainer train a model at least as good as Ultralytics' `yolo train`, and is the
mAP it logs the one `yolo val` prints for its best.pt?

Trains on CPU, one run at a time, each configuration once per seed, with the same data.yaml, model yaml,
imgsz, nominal batch (nbs), epochs, optimizer, lr0, warmup and augmentation on both sides:

  ultralytics   YOLO(model).train(...), 1 process, batch B (its defaults for everything not set here)
  ours_2x8      python -m launcher, 2 ranks, global batch B (B/2 per rank)
  ours_1x8acc2  1 process, batch B/2, nbs as given: accumulate 2 when nbs = B (the default)
  ours_1x16     1 process, batch B
  ours_default  python -m launcher's own shape (launcher.nproc_per_node=auto: 1 process on a machine without
                GPU), global batch B

Per run: the validation mAP50-95 after every epoch, best and final mAP50-95, wall time, time-to-accuracy, and
Ultralytics'
validator re-run on the run's best.pt (`YOLO(best.pt).val(...)`) next to the mAP50-95 the run logged for the
epoch best.pt holds (ours: the epoch stored in best.pt; Ultralytics: its last best epoch).
Time-to-accuracy, per seed: the wall time until a run first logs Ultralytics' best mAP50-95 of that seed
(Ultralytics: until its own best epoch), each counted from the command's start (setup included) until that
epoch's row appeared in the run's CSV (Ultralytics' results.csv, our metrics.csv), as this script saw it, polling
every 0.2 s. Over seeds: the same on the seed-mean curves, against the best of Ultralytics'
seed-mean curve (one seed's best is partly luck); the ratio to Ultralytics' is what the README's CPU default
rests on. Prints per-seed
tables and a summary (mean ± sample std, n-1, over seeds), and writes bench/out/parity-<data>.csv (one row per
run) and bench/out/parity-<data>.md (tables ready to paste, with the command line and date). Runs live in
bench/out/parity/<data>/<config>-s<seed>/; --resume keeps the finished ones whose recipe is unchanged.

Data: --data synthetic (our drawn PCB set), small_objects (bench/make_small_objects.py: small defects on
320x240 images) or path/to/data.yaml.

  python bench/parity.py --data small_objects --seeds 0,1,2            # the benchmark (hours on 2 cores)
  python bench/parity.py --seeds 0,1,2 --configs ultralytics,ours_default   # CPU time-to-accuracy (~40 min)
  python bench/parity.py --data synthetic --seeds 0,1,2 --resume       # continue an interrupted one
  python bench/parity.py --model yolo26n.yaml --seeds 0,1,2 --configs ultralytics,ours_default   # YOLO26 (E2ELoss)
  python bench/parity.py --data small_objects --n-train 32 --n-val 16 --imgsz 128 --epochs 2 --seeds 0 \\
      --configs ultralytics,ours_2x8                                      # smoke test, a few minutes
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import shlex
import shutil
import statistics
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from datetime import datetime
from pathlib import Path

from make_small_objects import default_root
from make_small_objects import make as make_small_objects
from train_throughput import OUT, REPO

PARITY = OUT / "parity"
CONFIGS = ("ultralytics", "ours_2x8", "ours_1x8acc2", "ours_1x16", "ours_default")
RESULT_FILE = "parity_result.json"
POLL_S = 0.2  # how often a running trainer's per-epoch CSV is checked for a new row
# Ultralytics' defaults for the augmentation keys our trainer has, passed explicitly on our side
AUG_DEFAULTS = ("data.hsv_h=0.015", "data.hsv_s=0.7", "data.hsv_v=0.4", "data.fliplr=0.5", "data.scale=0.5")
TRANSLATE = "data.translate=0.1"  # Ultralytics' default; passed only where our config has the key

TRAIN_SNIPPET = r"""
import json, sys
from ultralytics import YOLO
args = json.loads(sys.argv[1])
aug_stream = args.pop("aug_stream", None)
model = YOLO(args.pop("model"))
if aug_stream is not None:  # a seed-spread probe: another augmentation stream, the same init and data order
    import random
    import numpy as np

    def reseed(trainer):  # CPU training loads in the main process (0 workers), from Python's and NumPy's RNGs
        random.seed(aug_stream)
        np.random.seed(aug_stream)

    model.add_callback("on_train_start", reseed)
model.train(**args)
"""

VAL_SNIPPET = r"""
import json, sys
import torch
from ultralytics import YOLO
a = json.loads(sys.argv[1])
epoch = torch.load(a["weights"], map_location="cpu", weights_only=False).get("epoch")
m = YOLO(a["weights"]).val(data=a["data"], imgsz=a["imgsz"], batch=16, device="cpu", plots=False, verbose=False,
                           project=a["project"], name="yolo_val", exist_ok=True)
print("PARITY_VAL " + json.dumps({"map": float(m.box.map), "epoch": epoch}))
"""


class RunFailed(RuntimeError):
    pass


Failure = tuple[str, int, str]  # config, seed, why


@dataclass
class Result:
    config: str
    seed: int
    curve: list[float]  # validation mAP50-95 after epochs 1, 2, ...
    wall_s: float
    val_map: float  # Ultralytics' validator on the run's best.pt
    best_pt_epoch: int  # the epoch best.pt holds (1-based)
    recipe: dict
    clock: list[float] = field(default_factory=list)  # the run's own clock after each epoch's validation (s)
    seen: list[float] = field(default_factory=list)  # s from the command's start until each epoch's CSV row appeared

    @property
    def best(self) -> float:
        return max(self.curve)

    @property
    def best_epoch(self) -> int:
        return self.curve.index(self.best) + 1

    @property
    def final(self) -> float:
        return self.curve[-1]

    @property
    def logged_at_best_pt(self) -> float:
        return self.curve[self.best_pt_epoch - 1]

    @property
    def val_diff(self) -> float:
        return self.val_map - self.logged_at_best_pt

    @property
    def epoch_ends(self) -> list[float] | None:
        """Wall seconds from the command's start until each epoch's result was logged: as this script saw the
        CSV rows appear; for runs recorded before it watched, wall - (clock at the end - clock then), which
        also counts the run's tail after its last epoch. None without either."""
        if len(self.seen) == len(self.curve):
            return self.seen
        if len(self.clock) != len(self.curve):
            return None
        return [self.wall_s - (self.clock[-1] - c) for c in self.clock]

    def time_to(self, target: float) -> float | None:
        """Wall seconds from the process start until the end of the first epoch logging >= `target`; None when
        never reached (or when the run predates the per-epoch clock)."""
        return first_reaching(self.curve, self.epoch_ends, target)


def first_reaching(curve: list[float], ends: list[float] | None, target: float) -> float | None:
    epoch = next((i for i, m in enumerate(curve) if m >= target), None)
    return None if epoch is None or ends is None else ends[epoch]


def add_study_args(p: argparse.ArgumentParser, epochs: int, imgsz: int, val_every: int, imgsz_help: str) -> None:
    """The recipe and run options the seed studies (balance_study.py, tile_study.py) share."""
    p.add_argument("--model", default="yolov8n.yaml")
    p.add_argument("--imgsz", type=int, default=imgsz, help=imgsz_help)
    p.add_argument("--epochs", type=int, default=epochs)
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--optimizer", default="AdamW")
    p.add_argument("--lr0", type=float, default=0.002)
    p.add_argument("--warmup-epochs", type=float, default=1.0)
    p.add_argument("--mosaic", type=float, default=0.0, help="0: the CPU profile's choice for short runs")
    p.add_argument("--close-mosaic", type=int, default=0)
    p.add_argument("--workers", type=int, default=1)
    p.add_argument("--val-every", type=int, default=val_every, help="validate (and pick best.pt) every N epochs")
    p.add_argument("--extra", default="", help="more Hydra overrides for every run")
    p.add_argument("--code", type=Path, default=REPO,
                   help="the checkout whose `python -m launcher` trains (default: this one), e.g. a git archive "
                        "snapshot, to keep a long study off a tree that is being edited")
    p.add_argument("--fresh", action="store_true", help="rerun finished runs too")


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", default="small_objects", help="synthetic, small_objects or path/to/data.yaml")
    p.add_argument("--n-train", type=int, default=256, help="images of a generated set (synthetic, small_objects)")
    p.add_argument("--n-val", type=int, default=64)
    p.add_argument("--configs", default=",".join(CONFIGS), help=f"comma list of {', '.join(CONFIGS)}")
    p.add_argument("--seeds", default="0,1,2", help="comma list; every config runs once per seed")
    p.add_argument("--model", default="yolov8n.yaml", help="a model yaml both sides build, e.g. yolo26n.yaml")
    p.add_argument("--imgsz", type=int, default=256)
    p.add_argument("--epochs", type=int, default=16)
    p.add_argument("--batch", type=int, default=16, help="B, the global batch (ours_1x8acc2: B/2 per step, accumulated to nbs)")
    p.add_argument("--nbs", type=int, help="nominal batch (default: B)")
    p.add_argument("--optimizer", default="AdamW")
    p.add_argument("--lr0", type=float, default=0.002)
    p.add_argument("--warmup-epochs", type=float, default=1.0)
    p.add_argument("--mosaic", type=float, default=1.0)
    p.add_argument("--close-mosaic", type=int, default=10)
    p.add_argument("--workers", type=int, default=1, help="our data workers per rank (Ultralytics: 0)")
    p.add_argument("--aug-stream", type=int, default=None,
                   help="seed-spread probe: reseed Ultralytics' augmentation RNGs (Python, NumPy; it trains on CPU "
                        "with 0 loader workers) with this plus the seed when training starts, keeping its init and "
                        "data order")
    p.add_argument("--backend", default="torch", choices=["torch", "dali"], help="our data backend")
    p.add_argument("--resume", action="store_true", help="keep finished runs whose recipe is unchanged")
    p.add_argument("--extra", default="", help="more Hydra overrides for our side, e.g. train.loss_norm=per_batch; "
                   "runs and outputs are then tagged with them")
    a = p.parse_args()
    a.nbs = a.nbs or a.batch
    a.configs = a.configs.split(",")
    a.seeds = [int(s) for s in a.seeds.split(",")]
    if bad := [c for c in a.configs if c not in CONFIGS]:
        p.error(f"unknown config(s) {bad}; choose from {', '.join(CONFIGS)}")
    if a.batch % 2:
        p.error("--batch must be even (ours_2x8 and ours_1x8acc2 halve it)")
    return a


def prepare_data(a: argparse.Namespace) -> tuple[str, Path]:
    """(a short name for the run dirs, the data.yaml both sides train on)."""
    if a.data == "synthetic":
        sys.path.insert(0, str(REPO))
        from yolo_ddp.data.synthetic import materialize

        name = f"synthetic-{a.n_train}-{a.n_val}-{a.imgsz}"
        return name, materialize(OUT / "data" / name, a.n_train, a.n_val, img_size=a.imgsz, seed=0)
    if a.data == "small_objects":
        root = default_root(a.n_train, a.n_val, seed=0)
        return root.name, make_small_objects(root, a.n_train, a.n_val, seed=0)
    path = Path(a.data).resolve()
    if not path.is_file():
        raise SystemExit(f"--data {a.data}: no such data.yaml (or use synthetic / small_objects)")
    return path.parent.name, path


def recipe(config: str, a: argparse.Namespace, data_yaml: Path, translate: bool) -> dict:
    """Everything a run's result depends on; --resume reuses a result only when this is unchanged."""
    keys = ["model", "imgsz", "epochs", "batch", "nbs", "optimizer", "lr0", "warmup_epochs", "mosaic", "close_mosaic"]
    ours = {"workers": a.workers, "backend": a.backend, "translate": translate,
            **({"extra": a.extra} if a.extra else {})} if config != "ultralytics" else {}
    return {"data": str(data_yaml), **{k: getattr(a, k) for k in keys}, **ours}


def our_overrides(config: str, a: argparse.Namespace, data_yaml: Path, seed: int, run_dir: Path,
                  translate: bool) -> list[str]:
    """Every recipe value explicit: `train=default` keeps the launcher from adding the CPU profile."""
    nproc, batch = {"ours_2x8": (2, a.batch), "ours_1x8acc2": (1, a.batch // 2), "ours_1x16": (1, a.batch),
                    "ours_default": ("auto", a.batch)}[config]
    return [
        "+experiment=pcb_defects", "train=default", "data=custom", f"data.path={data_yaml}", f"model.cfg={a.model}",
        f"data.imgsz={a.imgsz}", f"train.epochs={a.epochs}", f"train.batch={batch}", f"train.nbs={a.nbs}",
        f"train.optimizer={a.optimizer}", f"train.lr0={a.lr0}", f"train.warmup_epochs={a.warmup_epochs}",
        f"data.mosaic={a.mosaic}", f"data.close_mosaic={a.close_mosaic}", f"train.seed={seed}", "train.val_every=1",
        "train.amp=off", f"data.workers={a.workers}", f"data.backend={a.backend}", "logger=csv",
        f"launcher.nproc_per_node={nproc}", *AUG_DEFAULTS, *([TRANSLATE] if translate else []),
        f"data.cache_dir={OUT / 'cache'}", f"hydra.run.dir={run_dir}", *shlex.split(a.extra),
    ]


def translate_composes(a: argparse.Namespace, data_yaml: Path) -> bool:
    """Whether our config has data.translate yet: compose a job with it (`--cfg job` prints and exits)."""
    overrides = our_overrides("ours_1x16", a, data_yaml, 0, PARITY / "probe", translate=True)
    probe = subprocess.run([sys.executable, "-m", "launcher", "--cfg", "job", *overrides], cwd=REPO, env=_env(),
                           capture_output=True, text=True)
    return probe.returncode == 0


def _env() -> dict[str, str]:
    return {**os.environ, "YOLO_OFFLINE": "1", "PYTHONUNBUFFERED": "1"}


def _rows(csv_path: Path) -> int:
    try:
        return max(0, len(csv_path.read_text().splitlines()) - 1)
    except OSError:
        return 0


def _run_logged(cmd: list[str], log: Path, cwd: Path, watch: Path) -> tuple[float, list[float]]:
    """Run to completion with stdout and stderr in `log`. Returns the wall time in seconds, and when (s since
    the start, to within POLL_S) each data row of the run's per-epoch CSV `watch` first appeared: the same
    observer times both trainers, from their command's start (setup included) to each epoch's logged result."""
    t0 = time.perf_counter()
    seen: list[float] = []
    with log.open("w") as f:
        proc = subprocess.Popen(cmd, cwd=cwd, env=_env(), stdout=f, stderr=subprocess.STDOUT)
        while proc.poll() is None:
            time.sleep(POLL_S)
            seen += [time.perf_counter() - t0] * (_rows(watch) - len(seen))
    if proc.returncode:
        tail = "\n".join(log.read_text(errors="replace").splitlines()[-25:])
        raise RunFailed(f"exit {proc.returncode}; log {log}, last lines:\n{tail}")
    return time.perf_counter() - t0, seen


def train_ultralytics(a: argparse.Namespace, data_yaml: Path, seed: int,
                      run_dir: Path) -> tuple[float, list[float], list[float], list[float]]:
    args = {
        "model": a.model, "data": str(data_yaml), "imgsz": a.imgsz, "epochs": a.epochs, "batch": a.batch,
        "nbs": a.nbs, "optimizer": a.optimizer, "lr0": a.lr0, "warmup_epochs": a.warmup_epochs,
        "mosaic": a.mosaic, "close_mosaic": a.close_mosaic, "seed": seed, "deterministic": True, "device": "cpu",
        "workers": 0, "amp": False, "plots": False, "val": True, "project": str(run_dir.parent),
        "name": run_dir.name, "exist_ok": True, "verbose": False,
        **({"aug_stream": a.aug_stream + seed} if a.aug_stream is not None else {}),
    }
    wall, seen = _run_logged([sys.executable, "-c", TRAIN_SNIPPET, json.dumps(args)], run_dir.with_suffix(".log"),
                             OUT, run_dir / "results.csv")
    return (wall, _curve(run_dir / "results.csv", "metrics/mAP50-95(B)"), _curve(run_dir / "results.csv", "time"),
            seen)


def train_ours(config: str, a: argparse.Namespace, data_yaml: Path, seed: int, run_dir: Path,
               translate: bool) -> tuple[float, list[float], list[float], list[float]]:
    cmd = [sys.executable, "-m", "launcher", *our_overrides(config, a, data_yaml, seed, run_dir, translate)]
    wall, seen = _run_logged(cmd, run_dir.with_suffix(".log"), REPO, run_dir / "metrics.csv")
    return wall, _curve(run_dir / "metrics.csv", "mAP50-95"), _curve(run_dir / "metrics.csv", "elapsed_s"), seen


def _curve(path: Path, column: str) -> list[float]:
    """A column's value for every epoch, in order (Ultralytics pads its CSV header with spaces in some versions)."""
    with path.open(newline="") as f:
        rows = [{k.strip(): v.strip() for k, v in row.items()} for row in csv.DictReader(f)]
    curve = [float(r[column]) for r in rows if r.get(column)]
    if len(curve) != len(rows) or not curve:
        raise RunFailed(f"{path}: expected a {column} value for every epoch")
    return curve


def run_val(snippet: str, tag: str, weights: Path, data_yaml: Path, imgsz: int, run_dir: Path) -> dict:
    """Run a validation `snippet` in a fresh process; the JSON it printed after `tag`."""
    args = {"weights": str(weights), "data": str(data_yaml), "imgsz": imgsz, "project": str(run_dir)}
    proc = subprocess.run([sys.executable, "-c", snippet, json.dumps(args)], cwd=OUT, env=_env(),
                          capture_output=True, text=True)
    found = [x for x in proc.stdout.splitlines() if x.startswith(f"{tag} ")]
    if proc.returncode or not found:
        raise RunFailed(f"yolo val on {weights} failed (exit {proc.returncode}):\n{proc.stderr[-2000:]}")
    return json.loads(found[-1].split(" ", 1)[1])


def yolo_val(weights: Path, data_yaml: Path, imgsz: int, run_dir: Path) -> tuple[float, int | None]:
    """Ultralytics' validator on `weights`: (mAP50-95, the epoch stored in the checkpoint)."""
    out = run_val(VAL_SNIPPET, "PARITY_VAL", weights, data_yaml, imgsz, run_dir)
    return out["map"], out["epoch"]


def best_pt_epoch(config: str, stored: int | None, curve: list[float]) -> int:
    """Ours stores the epoch in best.pt; Ultralytics strips it (-1), and rewrites best.pt on every epoch that
    equals the best fitness (its fitness is mAP50-95), so its best.pt holds the last epoch reaching the max."""
    if config != "ultralytics" and stored is not None and 1 <= stored <= len(curve):
        return stored
    return len(curve) - curve[::-1].index(max(curve))


def _batches(a: argparse.Namespace) -> str:
    """A suffix for a model other than yolov8n, and a batch or nbs other than the default 16/16, so those runs
    keep their own dirs."""
    model = "" if a.model == "yolov8n.yaml" else f"-{Path(a.model).stem}"
    return model + ("" if (a.batch, a.nbs) == (16, 16) else f"-b{a.batch}-nbs{a.nbs}")


def _variant(a: argparse.Namespace) -> str:
    """A suffix naming our side's backend and extra overrides, so variants keep their own runs and outputs."""
    parts = ([a.backend] if a.backend != "torch" else []) + [o.split(".")[-1].replace("=", "-")
                                                             for o in shlex.split(a.extra)]
    return "".join(f"-{p}" for p in parts)


def run_one(config: str, seed: int, a: argparse.Namespace, data_name: str, data_yaml: Path,
            translate: bool) -> Result:
    ultra = f"-aug{a.aug_stream}" if a.aug_stream is not None else ""
    variant = _batches(a) + (ultra if config == "ultralytics" else _variant(a))
    run_dir = PARITY / data_name / f"{config}{variant}-s{seed}"
    want = recipe(config, a, data_yaml, translate)
    if a.resume and (saved := load_result(run_dir, want)):
        print(f"{config} seed {seed}: kept {run_dir / RESULT_FILE}", flush=True)
        return saved
    shutil.rmtree(run_dir, ignore_errors=True)  # our launcher refuses a run dir that holds a run
    run_dir.parent.mkdir(parents=True, exist_ok=True)
    print(f"{config} seed {seed}: training, log {run_dir.with_suffix('.log')}", flush=True)
    if config == "ultralytics":
        wall, curve, clock, seen = train_ultralytics(a, data_yaml, seed, run_dir)
        weights = run_dir / "weights" / "best.pt"
    else:
        wall, curve, clock, seen = train_ours(config, a, data_yaml, seed, run_dir, translate)
        weights = run_dir / "best.pt"
    if len(curve) != a.epochs:
        raise RunFailed(f"{run_dir}: {len(curve)} validated epochs logged, expected {a.epochs}")
    val_map, stored = yolo_val(weights, data_yaml, a.imgsz, run_dir)
    result = Result(config, seed, curve, round(wall, 1), val_map, best_pt_epoch(config, stored, curve), want,
                    [round(c, 1) for c in clock], [round(t, 2) for t in seen])
    (run_dir / RESULT_FILE).write_text(json.dumps(asdict(result), indent=1))
    return result


def load_result(run_dir: Path, want: dict, kind: type = Result, name: str = RESULT_FILE):
    """A finished run's saved `kind` (a dataclass with a `recipe` field) when its recipe is `want`; else None."""
    try:
        saved = kind(**json.loads((run_dir / name).read_text()))
    except (OSError, ValueError, TypeError):
        return None
    return saved if saved.recipe == want else None


def mean_std(xs: list[float]) -> str:
    """Mean ± sample standard deviation (n-1); the mean alone for one value."""
    if len(xs) < 2:
        return f"{xs[0]:.4f}" if xs else "-"
    return f"{statistics.mean(xs):.4f} ± {statistics.stdev(xs):.4f}"


def md_table(header: list[str], rows: list[list]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    return "\n".join(lines + ["| " + " | ".join(str(x) for x in row) + " |" for row in rows])


def seed_table(results: list[Result]) -> str:
    rows = [[r.config, f"{r.best:.4f} (ep {r.best_epoch})", f"{r.final:.4f}", f"{r.val_map:.4f}",
             f"{r.logged_at_best_pt:.4f} (ep {r.best_pt_epoch})", f"{r.val_diff:+.4f}", f"{r.wall_s:.0f}"]
            for r in results]
    return md_table(["config", "best mAP50-95", "final mAP50-95", "yolo val best.pt", "logged for best.pt",
                     "val - logged", "wall s"], rows)


def summary_table(results: list[Result], configs: list[str]) -> str:
    by = {c: [r for r in results if r.config == c] for c in configs}
    base = statistics.mean(r.best for r in by["ultralytics"]) if by.get("ultralytics") else None
    rows = []
    for c, rs in by.items():
        if not rs:
            rows.append([c, 0, "-", "-", "-", "-", "-"])
            continue
        best = statistics.mean(r.best for r in rs)
        delta = f"{best - base:+.4f}" if base is not None else "-"
        rows.append([c, len(rs), mean_std([r.best for r in rs]), mean_std([r.final for r in rs]), delta,
                     f"{max(abs(r.val_diff) for r in rs):.4f}", f"{statistics.mean(r.wall_s for r in rs):.0f}"])
    return md_table(["config", "seeds", "best mAP50-95", "final mAP50-95", "mean best - ultralytics",
                     "max abs(yolo val - logged)", "mean wall s"], rows)


def tta_table(results: list[Result], configs: list[str]) -> str:
    """Per config: wall time to Ultralytics' best mAP50-95 of the same seed, and its ratio to Ultralytics' own."""
    base = {r.seed: r for r in results if r.config == "ultralytics"}
    rows = []
    for c in configs:
        pairs = [(r.time_to(base[r.seed].best), base[r.seed].time_to(base[r.seed].best))
                 for r in results if r.config == c and r.seed in base]
        if not pairs:
            continue
        reached = [(ours, ref) for ours, ref in pairs if ours is not None and ref]
        per_seed = " ".join(f"{ours / ref:.2f}" if ours is not None and ref else "never" for ours, ref in pairs)
        ratio = f"{sum(o for o, _ in reached) / sum(r for _, r in reached):.2f}" if reached else "-"
        rows.append([c, f"{len(reached)}/{len(pairs)}", per_seed, ratio,
                     f"{statistics.mean(o for o, _ in reached):.0f}" if reached else "-",
                     f"{statistics.mean(r for _, r in reached):.0f}" if reached else "-"])
    return md_table(["config", "seeds reaching it", "time / Ultralytics' time, per seed",
                     "sum of times / Ultralytics' sum", "mean s", "Ultralytics' mean s"], rows)


def mean_tta_table(results: list[Result], configs: list[str]) -> str:
    """Over seeds: each config's seed-mean curve against the best of Ultralytics' seed-mean curve, each epoch
    at its seed-mean wall time. One seed's best is partly luck (a lucky epoch sets a target no other run hits);
    the mean curve is the recipe's expected progress."""
    def mean_curve(rs: list[Result]) -> tuple[list[float], list[float] | None]:
        n = min(len(r.curve) for r in rs)
        ends = [r.epoch_ends for r in rs]
        curve = [statistics.mean(r.curve[e] for r in rs) for e in range(n)]
        return curve, None if None in ends else [statistics.mean(x[e] for x in ends) for e in range(n)]

    base_rs = [r for r in results if r.config == "ultralytics"]
    if not base_rs:
        return "(no ultralytics runs)"
    base_curve, base_ends = mean_curve(base_rs)
    target = max(base_curve)
    ref = first_reaching(base_curve, base_ends, target)
    rows = []
    for c in configs:
        rs = [r for r in results if r.config == c]
        if not rs:
            continue
        curve, ends = mean_curve(rs)
        t = first_reaching(curve, ends, target)
        epoch = next((i + 1 for i, m in enumerate(curve) if m >= target), None)
        rows.append([c, len(rs), f"{max(curve):.4f}", epoch or "never", f"{t:.0f}" if t is not None else "-",
                     f"{t / ref:.2f}" if t is not None and ref else "-"])
    return (f"Target: {target:.4f}, the best of Ultralytics' seed-mean curve.\n\n"
            + md_table(["config", "seeds", "best of the mean curve", "first epoch at target", "mean s to target",
                        "time / Ultralytics' time"], rows))


def curve_table(results: list[Result], configs: list[str]) -> str:
    """Mean validation mAP50-95 per epoch over seeds, one column per config."""
    by = {c: [r.curve for r in results if r.config == c] for c in configs}
    by = {c: curves for c, curves in by.items() if curves}
    epochs = max((len(c) for curves in by.values() for c in curves), default=0)
    rows = [[e + 1, *(f"{statistics.mean(c[e] for c in curves if len(c) > e):.4f}" for curves in by.values())]
            for e in range(epochs)]
    return md_table(["epoch", *by], rows)


def report(a: argparse.Namespace, data_name: str, results: list[Result], failures: list[Failure],
           translate: bool) -> str:
    command = shlex.join(["python", "bench/parity.py", *sys.argv[1:]])
    parts = [
        f"# Accuracy parity: our trainer vs `yolo train` ({data_name})", "",
        f"{datetime.now().astimezone().isoformat(timespec='seconds')}, CPU, `{command}`", "",
        f"Recipe: {a.model}, imgsz {a.imgsz}, {a.epochs} epochs, batch {a.batch}, nbs {a.nbs}, {a.optimizer} "
        f"lr0 {a.lr0}, warmup {a.warmup_epochs} epochs, mosaic {a.mosaic} (closed for the last {a.close_mosaic}), "
        f"our data backend {a.backend}; data.translate=0.1 on our side: {'yes' if translate else 'no (not in our config)'}. "
        "mAP50-95 on the val split after every epoch; ± is the sample standard deviation (n-1) over seeds. "
        "'yolo val best.pt' is Ultralytics' validator re-run on the run's best.pt; 'logged for best.pt' is what the "
        "run logged for the epoch best.pt holds.", "",
        "## Summary", "", summary_table(results, a.configs), "",
        "## Time to Ultralytics' best mAP50-95 (same seed)", "", tta_table(results, a.configs), "",
        "## Time to the best of Ultralytics' seed-mean curve", "", mean_tta_table(results, a.configs), "",
        "## Mean mAP50-95 per epoch", "", curve_table(results, a.configs), "",
    ]
    for seed in a.seeds:
        parts += [f"## Seed {seed}", "", seed_table([r for r in results if r.seed == seed]), ""]
    if failures:
        parts += ["## Failed runs", "", *(f"- {c} seed {s}: {why.splitlines()[0]}" for c, s, why in failures), ""]
    return "\n".join(parts)


def write_csv(results: list[Result], failures: list[Failure], data_name: str, tag: str) -> Path:
    path = OUT / f"parity-{tag}.csv"
    fields = ["data", "config", "seed", "best", "best_epoch", "final", "yolo_val_best_pt", "best_pt_epoch",
              "logged_for_best_pt", "val_minus_logged", "wall_s", "curve", "status"]
    with path.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(fields)
        for r in results:
            w.writerow([data_name, r.config, r.seed, f"{r.best:.5f}", r.best_epoch, f"{r.final:.5f}",
                        f"{r.val_map:.5f}", r.best_pt_epoch, f"{r.logged_at_best_pt:.5f}", f"{r.val_diff:+.5f}",
                        r.wall_s, " ".join(f"{x:.4f}" for x in r.curve), "ok"])
        for config, seed, _ in failures:
            w.writerow([data_name, config, seed, *[""] * 9, "failed"])
    return path


def main() -> None:
    a = parse_args()
    os.environ["YOLO_OFFLINE"] = "1"
    data_name, data_yaml = prepare_data(a)
    translate = any(c != "ultralytics" for c in a.configs) and translate_composes(a, data_yaml)
    print(f"data {data_yaml}; our side {'gets' if translate else 'has no'} {TRANSLATE}", flush=True)
    results: list[Result] = []
    failures: list[Failure] = []
    for seed in a.seeds:
        for config in a.configs:
            try:
                results.append(run_one(config, seed, a, data_name, data_yaml, translate))
            except RunFailed as e:
                print(f"{config} seed {seed} FAILED: {e}", flush=True)
                failures.append((config, seed, str(e)))
    text = report(a, data_name, results, failures, translate)
    subset = "" if tuple(a.configs) == CONFIGS else "-" + "-".join(a.configs)  # a partial run keeps its own files
    tag = data_name + _batches(a) + _variant(a) + subset
    md = OUT / f"parity-{tag}.md"
    md.write_text(text + "\n")
    print("\n" + text)
    print(f"csv: {write_csv(results, failures, data_name, tag)}\nmarkdown: {md}")


if __name__ == "__main__":
    main()
