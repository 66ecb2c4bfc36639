"""Tiled training vs full images on large boards with small defects (issue 25).

On bench/make_big_boards.py's boards (default 960x720, defects about 8-25 px), trains once per seed and mode with
`python -m launcher`, one run at a time, on one recipe (bench/parity.py's `our_overrides`: every value explicit,
`train=default`, 1 process on a machine without GPU):

  full   whole boards at imgsz 320 (a board is shrunk 3x, its defects to about 3-8 px)
  tiled  the same plus `data.tile=320`: each board becomes overlapping 320 px windows at imgsz 320 (full size)
  full_long  (a control, not in the defaults) full stretched to tiled's samples and steps: epochs, warmup epochs
         and val_every times the windows per board (12 for 960x720 at tile 320, overlap 0.2)

Both modes train for the same epochs (so tiled sees ~12x the samples and steps per epoch) and are validated on
the same val boards: for full, `mAP50-95` in metrics.csv is the whole-image score; for tiled it is the per-board
score from the windows' merged detections, with `mAP50-95_whole` (whole boards at imgsz 320, as for full) beside
it. Both are board-level scores: a full-image val image is a board. Per run: the best validated mAP50-95 and its
epoch, mAP50 and (tiled) mAP50-95_whole at that epoch, the largest `peak_mem_gib` (the training process's peak
RSS on CPU, the CUDA allocator's high-water mark on GPU) and the command's wall time, setup included. With
--native-val, each tiled best.pt is also scored by Ultralytics' own validator on whole boards at imgsz = the
board's long side (defects at full size, as in the tiles): an independent check on the per-board score.

Prints per-seed and summary tables (mean ± sample std over seeds, n-1) and the ratios tiled / full, writes
bench/out/tiles-<data>-e<epochs>[-<modes>][-s<seeds>].csv and .md. Runs live in
bench/out/tiles/<data>/<mode>-e<epochs>-s<seed>/; a finished run whose recipe is unchanged is kept when the
study runs again (--fresh reruns it), so an interrupted study resumes.

  mkdir -p /tmp/yolo-ddp-tiles && git archive HEAD | tar -x -C /tmp/yolo-ddp-tiles
  python bench/tile_study.py --code /tmp/yolo-ddp-tiles                  # the study: 3 seeds x 2 modes
  python bench/tile_study.py --code /tmp/yolo-ddp-tiles --modes full,tiled,full_long --native-val
                                                       # plus the equal-steps control and the native-size check
  python bench/tile_study.py --seeds 0 --epochs 1 --n-train 4 --n-val 2 --val-every 1   # smoke test
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import re
import shlex
import shutil
import statistics
import sys
import time
from dataclasses import asdict, dataclass
from datetime import datetime
from pathlib import Path

from make_big_boards import default_root, describe, make, parse_grid
from make_small_objects import H, W
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
    yolo_val,
)

STUDY = OUT / "tiles"
MODES = ("full", "tiled", "full_long")
RESULT_FILE = "study_result.json"
SAMPLES = re.compile(r"data\.tile=\d+ .*?: (\d+) train images -> (\d+) samples")


@dataclass
class Result:
    mode: str
    seed: int
    map: float  # best validated mAP50-95: per board (tiled) or whole image (full)
    map50: float  # at that epoch
    map_whole: float  # whole-image mAP50-95 at that epoch (full: the same as map)
    best_epoch: int
    curve: list[float]  # mAP50-95 of every validated epoch
    samples: int  # training samples per epoch (tiled: windows)
    epochs: int  # epochs trained
    peak_mem_gib: float
    wall_s: float  # the training command, setup and validation included
    recipe: dict
    median_epoch_s: float | None = None  # training time of the median epoch: robust to other load on the machine
    native_map: float | None = None  # --native-val: Ultralytics' `yolo val` of best.pt on whole boards at full size


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seeds", default="0,1,2", help="comma list; each mode trains once per seed")
    p.add_argument("--modes", default="full,tiled", help=f"comma list of {', '.join(MODES)}")
    p.add_argument("--n-train", type=int, default=64, help="boards of the generated set")
    p.add_argument("--n-val", type=int, default=24)
    p.add_argument("--grid", default="3x3", help="renders per board, COLSxROWS of 320x240 (3x3: 960x720)")
    p.add_argument("--tile", type=int, default=320, help="data.tile of the tiled mode (source px)")
    p.add_argument("--tile-overlap", type=float, default=0.2)
    add_study_args(p, epochs=12, imgsz=320, val_every=3, imgsz_help="both modes")
    p.add_argument("--native-val", action="store_true",
                   help="also score each tiled best.pt with Ultralytics' own validator on whole boards at "
                        "imgsz = the board's long side (full size, as the tiles see it): a check on the per-board score")
    a = p.parse_args()
    a.seeds = [int(s) for s in a.seeds.split(",")]
    a.modes = a.modes.split(",")
    a.code = a.code.resolve()
    if bad := [m for m in a.modes if m not in MODES]:
        p.error(f"unknown mode(s) {bad}; choose from {', '.join(MODES)}")
    return a


def mode_overrides(a: argparse.Namespace, mode: str) -> str:
    """The only difference between the modes: data.tile (and its overlap) for tiled."""
    return f"data.tile={a.tile} data.tile_overlap={a.tile_overlap}" if mode == "tiled" else ""


def windows_per_board(a: argparse.Namespace, hw: tuple[int, int]) -> int:
    """How many windows data.tile cuts one (h, w) board into (the trainer's own `windows`, from --code)."""
    sys.path.insert(0, str(a.code))
    from yolo_ddp.data.tiles.index import windows

    return len(windows(hw, a.tile, a.tile_overlap))


def stretch(a: argparse.Namespace, mode: str) -> int:
    """full_long's factor on epochs, warmup and val_every (tiled's samples per board); 1 for the other modes."""
    return a.windows if mode == "full_long" else 1


def parity_args(a: argparse.Namespace, mode: str) -> argparse.Namespace:
    """The fields parity.our_overrides reads; tiling and the validation cadence ride in `extra` (last wins)."""
    k = stretch(a, mode)
    extra = f"train.val_every={a.val_every * k} {mode_overrides(a, mode)} {a.extra}"
    return argparse.Namespace(model=a.model, imgsz=a.imgsz, epochs=a.epochs * k, batch=a.batch, nbs=a.batch,
                              optimizer=a.optimizer, lr0=a.lr0, warmup_epochs=a.warmup_epochs * k, mosaic=a.mosaic,
                              close_mosaic=a.close_mosaic, workers=a.workers, backend="torch",
                              extra=" ".join(extra.split()))


def recipe(a: argparse.Namespace, mode: str, data_yaml: Path) -> dict:
    """Everything a run's result depends on; a finished run is kept only when this is unchanged."""
    keys = ["n_train", "n_val", "grid", "model", "imgsz", "epochs", "batch", "optimizer", "lr0", "warmup_epochs",
            "mosaic", "close_mosaic", "workers", "val_every", "extra"]
    return {"data": str(data_yaml), "mode": mode, "tiling": mode_overrides(a, mode), "stretch": stretch(a, mode),
            **{k: getattr(a, k) for k in keys}}


def command(a: argparse.Namespace, mode: str, seed: int, data_yaml: Path, run_dir: Path) -> list[str]:
    overrides = our_overrides("ours_default", parity_args(a, mode), data_yaml, seed, run_dir, translate=True)
    return [sys.executable, "-m", "launcher", *overrides]


def read_rows(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as f:
        return list(csv.DictReader(f))


def best_row(rows: list[dict[str, str]]) -> dict[str, str]:
    """The first validated epoch with the highest mAP50-95 (the one best.pt holds)."""
    validated = [r for r in rows if r.get("mAP50-95")]
    if not validated:
        raise RunFailed("no validated epoch in metrics.csv")
    return max(validated, key=lambda r: float(r["mAP50-95"]))


def samples_per_epoch(log: Path, n_train: int) -> int:
    """Training samples per epoch: the windows the tiled index reports in rank0.log, else the boards."""
    text = log.read_text(errors="replace") if log.is_file() else ""
    found = SAMPLES.search(text)
    return int(found.group(2)) if found else n_train


def median_epoch_s(rows: list[dict[str, str]]) -> float:
    return round(statistics.median(float(r["epoch_time_s"]) for r in rows), 2)


def parse_run(mode: str, seed: int, run_dir: Path, wall: float, n_train: int, want: dict) -> Result:
    rows = read_rows(run_dir / "metrics.csv")
    best = best_row(rows)
    whole = best.get("mAP50-95_whole") or best["mAP50-95"]
    return Result(mode, seed, float(best["mAP50-95"]), float(best["mAP50"]), float(whole), int(best["epoch"]),
                  [float(r["mAP50-95"]) for r in rows if r.get("mAP50-95")],
                  samples_per_epoch(run_dir / "rank0.log", n_train), len(rows),
                  max(float(r["peak_mem_gib"]) for r in rows if r.get("peak_mem_gib")), round(wall, 1), want,
                  median_epoch_s(rows))


def native_val(a: argparse.Namespace, result: Result, run_dir: Path, data_yaml: Path) -> None:
    """Fill `native_map` for a tiled run (once), and save it with the result."""
    if a.native_val and result.mode == "tiled" and result.native_map is None:
        cols, rows = parse_grid(a.grid)
        result.native_map, _ = yolo_val(run_dir / "best.pt", data_yaml, max(cols * W, rows * H), run_dir)
        (run_dir / RESULT_FILE).write_text(json.dumps(asdict(result), indent=1))


def run_one(a: argparse.Namespace, mode: str, seed: int, data_yaml: Path) -> Result:
    run_dir = STUDY / data_yaml.parent.name / f"{mode}-e{a.epochs}-s{seed}"
    want = recipe(a, mode, data_yaml)
    if not a.fresh and (saved := load_result(run_dir, want, Result, RESULT_FILE)):
        print(f"{mode} seed {seed}: kept {run_dir / RESULT_FILE}", flush=True)
        if saved.median_epoch_s is None:  # saved before the field existed
            saved.median_epoch_s = median_epoch_s(read_rows(run_dir / "metrics.csv"))
            (run_dir / RESULT_FILE).write_text(json.dumps(asdict(saved), indent=1))
        native_val(a, saved, run_dir, data_yaml)
        return saved
    shutil.rmtree(run_dir, ignore_errors=True)  # our launcher refuses a run dir that holds a run
    run_dir.parent.mkdir(parents=True, exist_ok=True)
    print(f"{mode} seed {seed}: training, log {run_dir.with_suffix('.log')}", flush=True)
    wall, _ = _run_logged(command(a, mode, seed, data_yaml, run_dir), run_dir.with_suffix(".log"), a.code,
                          run_dir / "metrics.csv")
    result = parse_run(mode, seed, run_dir, wall, a.n_train, want)
    (run_dir / RESULT_FILE).write_text(json.dumps(asdict(result), indent=1))
    native_val(a, result, run_dir, data_yaml)
    print(f"{mode} seed {seed}: board mAP50-95 {result.map:.4f} (epoch {result.best_epoch}), whole-image "
          f"{result.map_whole:.4f}, {wall:.0f} s, peak {result.peak_mem_gib:.2f} GiB", flush=True)
    return result


def seed_table(results: list[Result]) -> str:
    rows = [[r.seed, r.mode, f"{r.map:.4f}", f"{r.map50:.4f}", f"{r.map_whole:.4f}", r.best_epoch, r.epochs,
             r.samples * r.epochs, " ".join(f"{x:.3f}" for x in r.curve), _fmt(r.native_map), f"{r.wall_s:.0f}",
             r.median_epoch_s, f"{r.peak_mem_gib:.2f}"]
            for r in sorted(results, key=lambda r: (r.seed, MODES.index(r.mode)))]
    return md_table(["seed", "mode", "board mAP50-95", "board mAP50", "whole-image mAP50-95", "best epoch",
                     "epochs", "samples seen", "mAP50-95 per validation", "yolo val, whole boards at full size",
                     "wall s", "median epoch s", "peak mem GiB"], rows)


def _fmt(x: float | None) -> str:
    return "-" if x is None else f"{x:.4f}"


def summary_table(results: list[Result], modes: list[str]) -> str:
    rows = []
    for m in modes:
        rs = [r for r in results if r.mode == m]
        if rs:
            rows.append([m, len(rs), mean_std([r.map for r in rs]), mean_std([r.map50 for r in rs]),
                         mean_std([r.map_whole for r in rs]), f"{statistics.mean(r.wall_s for r in rs):.0f}",
                         f"{min(r.wall_s for r in rs):.0f}",
                         f"{max(r.peak_mem_gib for r in rs):.2f}"])
    return md_table(["mode", "seeds", "board mAP50-95", "board mAP50", "whole-image mAP50-95", "mean wall s",
                     "min wall s", "max peak mem GiB"], rows)


def ratio(num: float, den: float) -> str:
    if den > 0:
        return f"{num / den:.2f}"
    return "inf" if num > 0 else "- (0/0)"


def ratio_table(results: list[Result]) -> str:
    """Board mAP50-95 of tiled over each full mode: per seed (the seeds that have both) and of the means."""
    by = {(r.mode, r.seed): r for r in results}
    rows = []
    for base in ("full", "full_long"):
        seeds = sorted(s for s in {r.seed for r in results} if (base, s) in by and ("tiled", s) in by)
        if seeds:
            means = [statistics.mean(by[m, s].map for s in seeds) for m in ("tiled", base)]
            walls = [statistics.mean(by[m, s].wall_s for s in seeds) for m in ("tiled", base)]
            rows.append([f"tiled / {base}", ", ".join(map(str, seeds)),
                         " ".join(ratio(by["tiled", s].map, by[base, s].map) for s in seeds), ratio(*means),
                         f"{walls[0] / walls[1]:.1f}x"])
    if not rows:
        return "(no seed has tiled and a full mode)"
    return md_table(["board mAP50-95", "seeds", "per seed", "of the means", "wall time tiled / that mode"], rows)


def report(a: argparse.Namespace, data_yaml: Path, results: list[Result], failures: list[str], wall: float) -> str:
    cmd = shlex.join(["python", "bench/tile_study.py", *sys.argv[1:]])
    parts = [
        f"# Tiled training vs full images ({data_yaml.parent.name})", "",
        f"{datetime.now().astimezone().isoformat(timespec='seconds')}, `{cmd}`; study wall time {wall:.0f} s", "",
        f"Recipe: {a.model}, imgsz {a.imgsz}, {a.epochs} epochs, batch {a.batch} = nbs, {a.optimizer} lr0 {a.lr0}, "
        f"warmup {a.warmup_epochs}, mosaic {a.mosaic}, validation every {a.val_every} epoch(s) and the last, 1 "
        f"process; tiled adds data.tile={a.tile} data.tile_overlap={a.tile_overlap}; full_long is full with "
        f"epochs, warmup and val_every x {a.windows} (tiled's samples and steps). 'yolo val, whole boards at full "
        "size': Ultralytics' validator on the tiled best.pt at imgsz = the board's long side (--native-val).", "",
        describe(data_yaml.parent), "",
        "## Summary", "", summary_table(results, a.modes), "",
        "## Ratio", "", ratio_table(results), "",
        "## Per seed", "", seed_table(results), "",
    ]
    if failures:
        parts += ["## Failed runs", "", *(f"- {f}" for f in failures), ""]
    return "\n".join(parts)


def write_csv(results: list[Result], path: Path) -> Path:
    fields = ["mode", "seed", "board_map50_95", "board_map50", "whole_map50_95", "best_epoch", "epochs",
              "samples_per_epoch", "native_map50_95", "wall_s", "median_epoch_s", "peak_mem_gib", "curve"]
    with path.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(fields)
        for r in results:
            w.writerow([r.mode, r.seed, f"{r.map:.5f}", f"{r.map50:.5f}", f"{r.map_whole:.5f}", r.best_epoch,
                        r.epochs, r.samples, _fmt(r.native_map).replace("-", ""), r.wall_s, r.median_epoch_s,
                        f"{r.peak_mem_gib:.3f}", " ".join(f"{x:.4f}" for x in r.curve)])
    return path


def subset_tag(a: argparse.Namespace) -> str:
    """A suffix for other modes or seeds than the defaults, so a partial study keeps its own files."""
    modes = "" if a.modes == ["full", "tiled"] else "-" + "-".join(a.modes)
    return modes + ("" if a.seeds == [0, 1, 2] else "-s" + "-".join(map(str, a.seeds)))


def main() -> None:
    a = parse_args()
    os.environ["YOLO_OFFLINE"] = "1"
    if a.code != REPO:
        os.environ["PYTHONPATH"] = str(a.code)  # the launcher's workers import that checkout's packages too
    cols, rows = parse_grid(a.grid)
    data_yaml = make(default_root(a.n_train, a.n_val, 0, cols, rows), a.n_train, a.n_val, 0, cols, rows)
    a.windows = windows_per_board(a, (rows * H, cols * W))
    print(f"data {data_yaml}; launcher from {a.code}\n{describe(data_yaml.parent)}", flush=True)
    t0, results, failures = time.perf_counter(), [], []
    for seed in a.seeds:
        for mode in a.modes:
            try:
                results.append(run_one(a, mode, seed, data_yaml))
            except RunFailed as e:
                print(f"{mode} seed {seed} FAILED: {e}", flush=True)
                failures.append(f"{mode} seed {seed}: {str(e).splitlines()[0]}")
    wall = time.perf_counter() - t0
    tag = f"{data_yaml.parent.name}-e{a.epochs}" + subset_tag(a)
    text = report(a, data_yaml, results, failures, wall)
    (OUT / f"tiles-{tag}.md").write_text(text + "\n")
    print("\n" + text)
    print(f"csv: {write_csv(results, OUT / f'tiles-{tag}.csv')}\nmarkdown: {OUT / f'tiles-{tag}.md'}\n"
          f"study wall time: {wall:.0f} s")


if __name__ == "__main__":
    main()
