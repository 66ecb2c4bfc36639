"""Does `data.sampler=balanced` help a rare class? (issue 24)

On the imbalanced drawn set of bench/make_imbalanced.py (the rarest class about 5% of the instances, the same
skew in val), trains once per seed and sampler (uniform, then balanced) with `python -m launcher`, one run at a
time, on the same recipe (bench/parity.py's `our_overrides`, plus `data.sampler=...`). Each run's best.pt is
then scored by Ultralytics' own validator (`YOLO(best.pt).val(...)`): overall mAP50-95 and every class's
AP50-95 (`metrics.box.ap` by `ap_class_index`).

Prints per-seed and summary tables (mean ± sample std over seeds, n-1; and the per-seed paired difference
balanced - uniform), and writes bench/out/balance-<tag>.csv (one row per run) and bench/out/balance-<tag>.md.
Runs live in bench/out/balance/<data>/<sampler>-e<epochs>-s<seed>/; a finished run whose recipe is unchanged is
kept when the study is run again (--fresh reruns it), so an interrupted study resumes where it stopped.

  python bench/balance_study.py                                   # the study: 3 seeds x 2 samplers (~23 min, 2 cores)
  python bench/balance_study.py --seeds 0 --epochs 2              # smoke test, a few minutes
  mkdir -p /tmp/head && git archive HEAD | tar -x -C /tmp/head && python bench/balance_study.py --code /tmp/head
                                                                   # train with a snapshot of the committed code
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import shlex
import shutil
import statistics
import sys
import time
from dataclasses import asdict, dataclass
from datetime import datetime
from pathlib import Path

from make_imbalanced import CLASS_NAMES, DEFAULT_SHARES, class_counts, counts_table, default_root, make
from parity import (
    OUT,
    REPO,
    RunFailed,
    _run_logged,
    add_study_args,
    load_result,
    md_table,
    mean_std,
    our_overrides,
    run_val,
)

STUDY = OUT / "balance"
SAMPLERS = ("uniform", "balanced")
RESULT_FILE = "study_result.json"

VAL_SNIPPET = r"""
import json, sys
import torch
from ultralytics import YOLO
a = json.loads(sys.argv[1])
epoch = torch.load(a["weights"], map_location="cpu", weights_only=False).get("epoch")
m = YOLO(a["weights"]).val(data=a["data"], imgsz=a["imgsz"], batch=16, device="cpu", plots=False, verbose=False,
                           project=a["project"], name="yolo_val", exist_ok=True)
b = m.box
out = {"map": float(b.map), "map50": float(b.map50), "epoch": epoch,
       "ap": {int(c): float(x) for c, x in zip(b.ap_class_index, b.ap)},
       "ap50": {int(c): float(x) for c, x in zip(b.ap_class_index, b.ap50)}}
print("STUDY_VAL " + json.dumps(out))
"""


@dataclass
class Result:
    sampler: str
    seed: int
    map: float  # Ultralytics' validator on best.pt: mAP50-95 over all classes
    map50: float
    ap: dict[str, float]  # AP50-95 per class name (classes with val instances)
    ap50: dict[str, float]
    best_pt_epoch: int | None
    curve: list[float]  # the run's own validation mAP50-95, per validated epoch
    seen_rare: float | None  # mean rare-class boxes per epoch the sampler showed (balanced only: metrics.csv)
    wall_s: float  # training command, setup included
    recipe: dict


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seeds", default="0,1,2", help="comma list; each sampler trains once per seed")
    p.add_argument("--samplers", default=",".join(SAMPLERS), help="comma list of uniform, balanced")
    p.add_argument("--n-train", type=int, default=512, help="images of the generated set")
    p.add_argument("--n-val", type=int, default=320)
    p.add_argument("--shares", default=",".join(map(str, DEFAULT_SHARES)),
                   help=f"class shares, in the order {', '.join(CLASS_NAMES)}")
    add_study_args(p, epochs=15, imgsz=256, val_every=1, imgsz_help="also the drawn images' size")
    a = p.parse_args()
    a.seeds = [int(s) for s in a.seeds.split(",")]
    a.samplers = a.samplers.split(",")
    a.shares = [float(x) for x in a.shares.split(",")]
    a.code = a.code.resolve()
    if bad := [s for s in a.samplers if s not in SAMPLERS]:
        p.error(f"unknown sampler(s) {bad}; choose from {', '.join(SAMPLERS)}")
    return a


def parity_args(a: argparse.Namespace, sampler: str) -> argparse.Namespace:
    """The fields parity.our_overrides reads; the sampler and validation cadence ride in `extra` (last wins)."""
    extra = f"data.sampler={sampler} train.val_every={a.val_every} {a.extra}".strip()
    return argparse.Namespace(model=a.model, imgsz=a.imgsz, epochs=a.epochs, batch=a.batch, nbs=a.batch,
                              optimizer=a.optimizer, lr0=a.lr0, warmup_epochs=a.warmup_epochs, mosaic=a.mosaic,
                              close_mosaic=a.close_mosaic, workers=a.workers, backend="torch", extra=extra)


def recipe(a: argparse.Namespace, sampler: str, data_yaml: Path) -> dict:
    """Everything a run's result depends on; a finished run is kept only when this is unchanged."""
    keys = ["n_train", "n_val", "shares", "model", "imgsz", "epochs", "batch", "optimizer", "lr0", "warmup_epochs",
            "mosaic", "close_mosaic", "workers", "val_every", "extra"]
    return {"data": str(data_yaml), "sampler": sampler, **{k: getattr(a, k) for k in keys}}


def train(a: argparse.Namespace, sampler: str, seed: int, data_yaml: Path, run_dir: Path) -> tuple[float, list[float]]:
    """One launcher run (1 process on a machine without GPU); its wall time and logged mAP50-95 curve."""
    overrides = our_overrides("ours_default", parity_args(a, sampler), data_yaml, seed, run_dir, translate=True)
    cmd = [sys.executable, "-m", "launcher", *overrides]
    wall, _ = _run_logged(cmd, run_dir.with_suffix(".log"), a.code, run_dir / "metrics.csv")
    curve = [float(x) for x in _column(run_dir / "metrics.csv", "mAP50-95") if x]
    if not curve:
        raise RunFailed(f"{run_dir}: no validated epoch in metrics.csv")
    return wall, curve


def _column(path: Path, column: str) -> list[str]:
    with path.open(newline="") as f:
        return [row.get(column, "") for row in csv.DictReader(f)]


def seen_rare(run_dir: Path, rare: str) -> float | None:
    """Mean boxes of the rare class per epoch's draw (the balanced sampler logs seen_<class>; uniform does not)."""
    seen = [float(x) for x in _column(run_dir / "metrics.csv", f"seen_{rare}") if x]
    return statistics.mean(seen) if seen else None


def yolo_val(weights: Path, data_yaml: Path, imgsz: int, run_dir: Path) -> dict:
    """Ultralytics' validator on `weights`: mAP50-95, mAP50, per-class AP50-95 / AP50, the checkpoint's epoch."""
    return run_val(VAL_SNIPPET, "STUDY_VAL", weights, data_yaml, imgsz, run_dir)


def _by_name(per_class: dict[str, float]) -> dict[str, float]:
    return {CLASS_NAMES[int(c)]: v for c, v in per_class.items()}


def run_one(a: argparse.Namespace, sampler: str, seed: int, data_yaml: Path, rare: str) -> Result:
    run_dir = STUDY / data_yaml.parent.name / f"{sampler}-e{a.epochs}-s{seed}"
    want = recipe(a, sampler, data_yaml)
    if not a.fresh and (saved := load_result(run_dir, want, Result, RESULT_FILE)):
        print(f"{sampler} seed {seed}: kept {run_dir / RESULT_FILE}", flush=True)
        return saved
    shutil.rmtree(run_dir, ignore_errors=True)  # our launcher refuses a run dir that holds a run
    run_dir.parent.mkdir(parents=True, exist_ok=True)
    print(f"{sampler} seed {seed}: training, log {run_dir.with_suffix('.log')}", flush=True)
    wall, curve = train(a, sampler, seed, data_yaml, run_dir)
    v = yolo_val(run_dir / "best.pt", data_yaml, a.imgsz, run_dir)
    result = Result(sampler, seed, v["map"], v["map50"], _by_name(v["ap"]), _by_name(v["ap50"]), v["epoch"], curve,
                    seen_rare(run_dir, rare), round(wall, 1), want)
    (run_dir / RESULT_FILE).write_text(json.dumps(asdict(result), indent=1))
    print(f"{sampler} seed {seed}: {rare} AP50-95 {result.ap.get(rare, 0.0):.4f}, mAP50-95 {result.map:.4f}, "
          f"{wall:.0f} s", flush=True)
    return result


def others_map(r: Result, rare: str) -> float:
    """Mean AP50-95 over every class but the rare one: what balancing could cost the common classes."""
    return statistics.mean(v for k, v in r.ap.items() if k != rare)


def seed_table(results: list[Result], rare: str) -> str:
    rows = [[r.seed, r.sampler, f"{r.ap.get(rare, 0.0):.4f}", f"{r.ap50.get(rare, 0.0):.4f}", f"{r.map:.4f}",
             f"{others_map(r, rare):.4f}", r.best_pt_epoch, f"{r.seen_rare:.0f}" if r.seen_rare else "-",
             f"{r.wall_s:.0f}"] for r in sorted(results, key=lambda r: (r.seed, SAMPLERS.index(r.sampler)))]
    return md_table(["seed", "sampler", f"{rare} AP50-95", f"{rare} AP50", "mAP50-95", "mAP50-95 other classes",
                     "best.pt epoch", f"{rare} boxes seen / epoch", "wall s"], rows)


def summary_table(results: list[Result], samplers: list[str], rare: str) -> str:
    rows = []
    for s in samplers:
        rs = [r for r in results if r.sampler == s]
        if rs:
            rows.append([s, len(rs), mean_std([r.ap.get(rare, 0.0) for r in rs]), mean_std([r.map for r in rs]),
                         mean_std([others_map(r, rare) for r in rs]), f"{statistics.mean(r.wall_s for r in rs):.0f}"])
    return md_table(["sampler", "seeds", f"{rare} AP50-95", "mAP50-95", "mAP50-95 other classes", "mean wall s"], rows)


def paired_table(results: list[Result], rare: str) -> str:
    """Per seed, balanced - uniform (the seed fixes init and data; only the sampler differs), then mean ± std."""
    by = {(r.sampler, r.seed): r for r in results}
    seeds = sorted(s for s in {r.seed for r in results} if ("uniform", s) in by and ("balanced", s) in by)
    if not seeds:
        return "(no seed has both samplers)"
    diffs = {name: [f(by["balanced", s]) - f(by["uniform", s]) for s in seeds] for name, f in (
        (f"{rare} AP50-95", lambda r: r.ap.get(rare, 0.0)), ("mAP50-95", lambda r: r.map),
        ("mAP50-95 other classes", lambda r: others_map(r, rare)))}
    rows = [[name, " ".join(f"{d:+.4f}" for d in ds), mean_std(ds)] for name, ds in diffs.items()]
    return md_table(["balanced - uniform", f"per seed ({', '.join(map(str, seeds))})", "mean ± std"], rows)


def report(a: argparse.Namespace, data_yaml: Path, results: list[Result], rare: str, failures: list[str]) -> str:
    command = shlex.join(["python", "bench/balance_study.py", *sys.argv[1:]])
    parts = [
        f"# Balanced sampler study ({data_yaml.parent.name})", "",
        f"{datetime.now().astimezone().isoformat(timespec='seconds')}, `{command}`", "",
        f"Recipe: {a.model}, imgsz {a.imgsz}, {a.epochs} epochs, batch {a.batch} = nbs, {a.optimizer} lr0 {a.lr0}, "
        f"warmup {a.warmup_epochs}, mosaic {a.mosaic}, validation every {a.val_every} epoch(s), 1 process "
        f"(launcher.nproc_per_node=auto). Scored by `YOLO(best.pt).val()` on the val split; rarest class: {rare}.",
        "", counts_table(data_yaml.parent), "",
        "## Summary", "", summary_table(results, a.samplers, rare), "",
        "## Paired by seed", "", paired_table(results, rare), "",
        "## Per seed", "", seed_table(results, rare), "",
    ]
    if failures:
        parts += ["## Failed runs", "", *(f"- {f}" for f in failures), ""]
    return "\n".join(parts)


def write_csv(results: list[Result], path: Path, rare: str) -> Path:
    fields = ["sampler", "seed", "rare_class", "rare_ap50_95", "map50_95", "map50", "best_pt_epoch", "seen_rare",
              "wall_s", *(f"ap50_95_{c}" for c in CLASS_NAMES), "curve"]
    with path.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(fields)
        for r in results:
            w.writerow([r.sampler, r.seed, rare, f"{r.ap.get(rare, 0.0):.5f}", f"{r.map:.5f}", f"{r.map50:.5f}",
                        r.best_pt_epoch, f"{r.seen_rare:.1f}" if r.seen_rare else "", r.wall_s,
                        *(f"{r.ap[c]:.5f}" if c in r.ap else "" for c in CLASS_NAMES),
                        " ".join(f"{x:.4f}" for x in r.curve)])
    return path


def main() -> None:
    a = parse_args()
    os.environ["YOLO_OFFLINE"] = "1"
    if a.code != REPO:
        os.environ["PYTHONPATH"] = str(a.code)  # the launcher's workers import that checkout's packages too
    data_yaml = make(default_root(a.n_train, a.n_val, a.imgsz, 0, a.shares), a.n_train, a.n_val, a.imgsz, 0, a.shares)
    counts = class_counts(data_yaml.parent, "train")
    rare = CLASS_NAMES[min((c for c in range(len(counts)) if counts[c]), key=counts.__getitem__)]
    print(f"data {data_yaml}; rarest class {rare}; launcher from {a.code}\n{counts_table(data_yaml.parent)}", flush=True)
    t0, results, failures = time.perf_counter(), [], []
    for seed in a.seeds:
        for sampler in a.samplers:
            try:
                results.append(run_one(a, sampler, seed, data_yaml, rare))
            except RunFailed as e:
                print(f"{sampler} seed {seed} FAILED: {e}", flush=True)
                failures.append(f"{sampler} seed {seed}: {str(e).splitlines()[0]}")
    tag = f"{data_yaml.parent.name}-e{a.epochs}"
    text = report(a, data_yaml, results, rare, failures)
    (OUT / f"balance-{tag}.md").write_text(text + "\n")
    print("\n" + text)
    print(f"csv: {write_csv(results, OUT / f'balance-{tag}.csv', rare)}\nmarkdown: {OUT / f'balance-{tag}.md'}\n"
          f"study wall time: {time.perf_counter() - t0:.0f} s")


if __name__ == "__main__":
    main()
