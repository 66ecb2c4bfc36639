"""A seeded set of LARGE boards with small defects, for the `data.tile` study (issue 25).

Each board is a grid of bench/make_small_objects.py renders (`render(rng)`: one 320x240 board with 0-4 defects
of about 8-25 px), pasted side by side: the default 3x3 grid gives 960x720 boards, each with about 17 defects
that keep their drawn pixel size. The label rows of every render are shifted and rescaled to the big board's
normalized coordinates. At imgsz 320 a whole board is shrunk 3x (defects about 3-8 px), while a 320 px tile
keeps them at full size: the half-scale stand-in for the issue's 1600x1200 boards with 8-20 px defects at 640.

Deterministic: the same arguments give the same bytes (render i of board j of a split is seeded by
[seed, split stream, j, i]). Writes images/{train,val} (JPEG), labels/{train,val} and data.yaml (absolute path)
into a temporary sibling renamed into place, with a completion marker written last; a complete build with the
same parameters is left alone. Prints the data.yaml, the counts and the defect box sizes in board pixels.

  python bench/make_big_boards.py                           # 64 train / 24 val boards of 960x720
  python bench/make_big_boards.py --n-train 8 --n-val 4 --grid 2x2   # a small 640x480 set
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import cv2
import numpy as np
from make_small_objects import CLASS_NAMES, OUT, H, W, build_once, render
from make_small_objects import VERSION as RENDER_VERSION

VERSION = 1  # bump when the composition changes, so complete builds are rebuilt
STREAMS = {"train": 0, "val": 1}


def compose(seed: int, stream: int, index: int, cols: int, rows: int) -> tuple[np.ndarray, list[str]]:
    """One (rows*H) x (cols*W) BGR board and its YOLO label rows, normalized to the whole board."""
    board = np.empty((rows * H, cols * W, 3), np.uint8)
    labels: list[str] = []
    for r in range(rows):
        for c in range(cols):
            img, cell_rows = render(np.random.default_rng([seed, stream, index, r * cols + c]))
            board[r * H:(r + 1) * H, c * W:(c + 1) * W] = img
            labels += [_to_board(row, c, r, cols, rows) for row in cell_rows]
    return board, labels


def _to_board(row: str, col: int, r: int, cols: int, rows: int) -> str:
    """A label row normalized to one grid cell → the same box normalized to the board."""
    cls, cx, cy, w, h = row.split()
    x, y = (col + float(cx)) / cols, (r + float(cy)) / rows
    return f"{cls} {x:.6f} {y:.6f} {float(w) / cols:.6f} {float(h) / rows:.6f}\n"


def _write_split(root: Path, split: str, n: int, seed: int, cols: int, rows: int) -> None:
    for sub in ("images", "labels"):
        (root / sub / split).mkdir(parents=True)
    for i in range(n):
        img, labels = compose(seed, STREAMS[split], i, cols, rows)
        cv2.imwrite(str(root / "images" / split / f"{i:06d}.jpg"), img, [cv2.IMWRITE_JPEG_QUALITY, 95])
        (root / "labels" / split / f"{i:06d}.txt").write_text("".join(labels))


def _marker(n_train: int, n_val: int, seed: int, cols: int, rows: int) -> str:
    return json.dumps({"version": VERSION, "render_version": RENDER_VERSION, "n_train": n_train, "n_val": n_val,
                       "seed": seed, "grid": [cols, rows]}, sort_keys=True)


def make(root: Path, n_train: int = 64, n_val: int = 24, seed: int = 0, cols: int = 3, rows: int = 3) -> Path:
    """Build the set under `root` (unless a complete build with these parameters is there); its data.yaml."""

    def write(tmp: Path) -> None:
        _write_split(tmp, "train", n_train, seed, cols, rows)
        _write_split(tmp, "val", n_val, seed, cols, rows)

    return build_once(Path(root).resolve(), _marker(n_train, n_val, seed, cols, rows), write)


def default_root(n_train: int, n_val: int, seed: int, cols: int = 3, rows: int = 3) -> Path:
    return OUT / "data" / f"big_boards-{cols * W}x{rows * H}-{n_train}-{n_val}-s{seed}"


def split_stats(root: Path, split: str) -> dict:
    """Boards, boxes per class and the boxes' side lengths in board pixels (min, max of the shorter and longer)."""
    img = cv2.imread(str(next(iter(sorted((root / "images" / split).glob("*.jpg"))))))
    bh, bw = img.shape[:2]
    labels = sorted((root / "labels" / split).glob("*.txt"))
    rows = np.array([list(map(float, r.split())) for p in labels for r in p.read_text().splitlines()]).reshape(-1, 5)
    sides = np.stack([rows[:, 3] * bw, rows[:, 4] * bh], 1)
    short, long_ = sides.min(1), sides.max(1)
    return {"boards": len(labels), "size": f"{bw}x{bh}", "boxes": len(rows),
            "per_class": {n: int((rows[:, 0] == k).sum()) for k, n in enumerate(CLASS_NAMES)},
            "box_px": (round(float(short.min()), 1), round(float(long_.max()), 1)) if len(rows) else None,
            "median_px": round(float(np.median(np.sqrt(sides.prod(1)))), 1) if len(rows) else None}


def describe(root: Path) -> str:
    lines = []
    for split in STREAMS:
        s = split_stats(root, split)
        lines.append(f"{split}: {s['boards']} boards of {s['size']}, {s['boxes']} boxes {s['per_class']}, box sides "
                     f"{s['box_px'][0]}-{s['box_px'][1]} px (median sqrt(w*h) {s['median_px']} px)")
    return "\n".join(lines)


def parse_grid(text: str) -> tuple[int, int]:
    cols, rows = (int(v) for v in text.lower().split("x"))
    return cols, rows


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--root", type=Path, help="default: bench/out/data/big_boards-<WxH>-<n_train>-<n_val>-s<seed>")
    p.add_argument("--n-train", type=int, default=64)
    p.add_argument("--n-val", type=int, default=24)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--grid", default="3x3", help=f"COLSxROWS renders of {W}x{H} per board (3x3: 960x720)")
    a = p.parse_args()
    cols, rows = parse_grid(a.grid)
    data_yaml = make(a.root or default_root(a.n_train, a.n_val, a.seed, cols, rows), a.n_train, a.n_val, a.seed,
                     cols, rows)
    print(data_yaml)
    print(describe(data_yaml.parent))


if __name__ == "__main__":
    main()
