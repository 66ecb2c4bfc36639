"""A seeded PCB-like YOLO data set with SMALL defects on non-square images, unlike our synthetic set.

Each 320x240 (w x h) image is a green board laid out in a 3x2 grid of cells: buses of parallel copper
traces ending in drilled pads, IC footprints with SMD pads and a silkscreen outline, loose vias and
silkscreen text. Defects are drawn into that layout, each about 8-25 px (about 6-20 px at imgsz 256):

  0 missing_hole  a pad or via left undrilled (solid copper, no dark hole)
  1 short         a silvery solder bridge between two neighbouring traces of a bus
  2 spur          a thin copper spike off a trace edge
  3 open          a gap cut across a trace

0-4 defects per image, about one image in six background-only. Boxes are the drawn defect pixels' bounds
plus 2 px, grown to at least 8 px. Writes images/{train,val} (JPEG), labels/{train,val} and data.yaml
(absolute path); a complete build with the same parameters is left alone.

  python bench/make_small_objects.py                      # 256 train / 64 val under bench/out/data/
  python bench/make_small_objects.py --n-train 32 --n-val 16 --preview 6   # also draws boxes to check
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np
import yaml

W, H = 320, 240
CLASS_NAMES = ("missing_hole", "short", "spur", "open")
MARGIN, MIN_BOX = 2, 8  # pixels
VERSION = 1  # bump when the drawing changes, so complete builds with old pixels are rebuilt
MARKER = ".complete"
OWN_ENTRIES = frozenset({"images", "labels", "data.yaml", MARKER})
OUT = Path(__file__).resolve().parent / "out"

BOARD, COPPER, SOLDER, HOLE, SILK = (38, 92, 30), (60, 140, 200), (175, 185, 195), (25, 25, 25), (215, 225, 225)
Rng = np.random.Generator
Box = tuple[int, int, int, int]  # x0, y0, x1, y1 in pixels, x1/y1 exclusive


@dataclass
class Trace:
    p0: np.ndarray  # start point (x, y)
    p1: np.ndarray  # end point, along one axis from p0
    width: int
    pitch: int  # distance to the neighbouring traces of its bus
    normal: np.ndarray  # unit vector towards `next`
    prev: Trace | None = None  # neighbour at -pitch along the normal
    next: Trace | None = None  # neighbour at +pitch

    @property
    def axis(self) -> np.ndarray:
        d = self.p1 - self.p0
        return d / np.linalg.norm(d)

    def length(self) -> float:
        return float(np.linalg.norm(self.p1 - self.p0))


@dataclass
class Board:
    img: np.ndarray
    colours: dict[str, tuple[int, int, int]]
    traces: list[Trace] = field(default_factory=list)
    pads: list[tuple[np.ndarray, int]] = field(default_factory=list)  # drilled pads and vias: (centre, radius)


def _colours(rng: Rng) -> dict[str, tuple[int, int, int]]:
    """Jitter the board and copper hues per image so no single colour is a shortcut."""
    b, c = (int(v) for v in rng.integers(-10, 11, 2))
    jitter = lambda bgr, d: tuple(int(np.clip(v + d, 0, 255)) for v in bgr)  # noqa: E731
    return {"board": jitter(BOARD, b), "copper": jitter(COPPER, c), "solder": SOLDER, "hole": HOLE, "silk": SILK}


def _pt(p: np.ndarray) -> tuple[int, int]:
    return int(round(p[0])), int(round(p[1]))


def _pad(board: Board, centre: np.ndarray, r: int) -> None:
    cv2.circle(board.img, _pt(centre), r, board.colours["copper"], -1, cv2.LINE_AA)
    cv2.circle(board.img, _pt(centre), max(1, round(r * 0.45)), board.colours["hole"], -1, cv2.LINE_AA)
    board.pads.append((centre, r))


def _bus(board: Board, rng: Rng, cell: Box) -> None:
    """2-5 parallel traces, horizontal or vertical, staggered, each ending in two drilled pads."""
    x0, y0, x1, y1 = cell
    horizontal = rng.random() < 0.5
    along, across = ((x0, x1), (y0, y1)) if horizontal else ((y0, y1), (x0, x1))
    pitch, width = int(rng.integers(12, 19)), int(rng.integers(3, 5))
    r = int(rng.integers(4, min(6, (pitch - 3) // 2) + 1))
    n = min(int(rng.integers(2, 6)), (across[1] - across[0] - 2 * r - 8) // pitch + 1)
    first = rng.uniform(across[0] + r + 4, across[1] - r - 4 - (n - 1) * pitch)
    prev = None
    for k in range(n):
        a0 = rng.uniform(along[0] + r + 2, along[0] + 0.3 * (along[1] - along[0]))
        a1 = rng.uniform(along[1] - 0.3 * (along[1] - along[0]), along[1] - r - 2)
        c = first + k * pitch
        p0, p1 = (np.array([a0, c]), np.array([a1, c])) if horizontal else (np.array([c, a0]), np.array([c, a1]))
        trace = Trace(p0, p1, width, pitch, np.array([0.0, 1.0] if horizontal else [1.0, 0.0]), prev=prev)
        if prev is not None:
            prev.next = trace
        prev = trace
        board.traces.append(trace)
        cv2.line(board.img, _pt(p0), _pt(p1), board.colours["copper"], width, cv2.LINE_AA)
        _pad(board, p0, r)
        _pad(board, p1, r)


def _footprint(board: Board, rng: Rng, cell: Box) -> None:
    """An IC: silkscreen outline, pin-1 dot and two rows of SMD pads (distractors, never defects)."""
    x0, y0, x1, y1 = cell
    bw, bh = int(rng.integers(30, 55)), int(rng.integers(18, 32))
    cx, cy = rng.uniform(x0 + bw / 2 + 8, x1 - bw / 2 - 8), rng.uniform(y0 + bh / 2 + 10, y1 - bh / 2 - 10)
    tl, br = (int(cx - bw / 2), int(cy - bh / 2)), (int(cx + bw / 2), int(cy + bh / 2))
    cv2.rectangle(board.img, tl, br, board.colours["silk"], 1)
    cv2.circle(board.img, (tl[0] + 4, tl[1] + 4), 1, board.colours["silk"], -1)
    n = max(2, (bw - 6) // 7)
    for k in range(n):
        x = int(tl[0] + 3 + k * (bw - 6) / max(n - 1, 1))
        for y in (tl[1] - 7, br[1] + 1):
            cv2.rectangle(board.img, (x - 1, y), (x + 2, y + 6), board.colours["copper"], -1)


def _vias(board: Board, rng: Rng, cell: Box) -> None:
    x0, y0, x1, y1 = cell
    placed: list[np.ndarray] = []
    for _ in range(int(rng.integers(3, 9))):
        r = int(rng.integers(3, 6))
        c = rng.uniform([x0 + r + 3, y0 + r + 3], [x1 - r - 3, y1 - r - 3])
        if all(np.linalg.norm(c - q) > 2 * r + 8 for q in placed):
            placed.append(c)
            _pad(board, c, r)


def _silk_text(board: Board, rng: Rng) -> None:
    for _ in range(int(rng.integers(1, 4))):
        label = f"{rng.choice(list('RCUDLQ'))}{int(rng.integers(1, 40))}"
        org = (int(rng.integers(2, W - 30)), int(rng.integers(10, H - 2)))
        cv2.putText(board.img, label, org, cv2.FONT_HERSHEY_PLAIN, 0.7, board.colours["silk"], 1, cv2.LINE_AA)


def _layout(rng: Rng) -> Board:
    """Text first, so copper drawn later covers it; one bus, footprint, via group or nothing per cell."""
    colours = _colours(rng)
    board = Board(np.full((H, W, 3), colours["board"], np.uint8), colours)
    _silk_text(board, rng)
    cells = [(x, y, x + W // 3, y + H // 2) for y in (0, H // 2) for x in (0, W // 3, 2 * W // 3)]
    kinds = rng.choice(["bus", "bus", "footprint", "vias", "empty"], len(cells))
    if "bus" not in kinds:
        kinds[int(rng.integers(len(cells)))] = "bus"  # shorts, spurs and opens need traces
    draw = {"bus": _bus, "footprint": _footprint, "vias": _vias, "empty": lambda *_: None}
    for cell, kind in zip(cells, kinds, strict=True):
        draw[kind](board, rng, cell)
    return board


def _spot(rng: Rng, trace: Trace, keep_off_ends: float) -> np.ndarray | None:
    """A point on the trace at least `keep_off_ends` from both ends (its pads), or None if too short."""
    if trace.length() <= 2 * keep_off_ends:
        return None
    return trace.p0 + trace.axis * rng.uniform(keep_off_ends, trace.length() - keep_off_ends)


def _missing_hole(board: Board, rng: Rng, mask: np.ndarray) -> bool:
    if not board.pads:
        return False
    centre, r = board.pads[int(rng.integers(len(board.pads)))]
    cv2.circle(board.img, _pt(centre), r, board.colours["copper"], -1, cv2.LINE_AA)
    cv2.circle(mask, _pt(centre), r, 255, -1)
    return True


def _short(board: Board, rng: Rng, mask: np.ndarray) -> bool:
    """A solder bridge from this trace's centre line to its next neighbour's, where both run side by side."""
    trace = board.traces[int(rng.integers(len(board.traces)))]
    other = trace.next
    if other is None:
        return False
    lo = max(trace.p0 @ trace.axis, other.p0 @ trace.axis) + 10
    hi = min(trace.p1 @ trace.axis, other.p1 @ trace.axis) - 10
    if hi <= lo:
        return False
    a, half = rng.uniform(lo, hi), rng.uniform(1.5, 2.5)
    start = trace.p0 + trace.axis * (a - trace.p0 @ trace.axis)
    end = start + trace.normal * trace.pitch
    side = trace.axis * half
    poly = np.array([start - side, start + side, end + side, end - side])
    _fill(board, mask, poly, board.colours["solder"])
    return True


def _spur(board: Board, rng: Rng, mask: np.ndarray) -> bool:
    """A sharp spike off one edge, only where the free board on that side leaves room for it."""
    trace = board.traces[int(rng.integers(len(board.traces)))]
    at = _spot(rng, trace, 10)
    side, length = float(rng.choice([-1.0, 1.0])), rng.uniform(5, 9)
    neighbour = trace.next if side > 0 else trace.prev
    if at is None or (neighbour is not None and trace.pitch - trace.width < length + 4):
        return False
    edge = at + trace.normal * side * (trace.width / 2 - 0.5)
    half_base = trace.axis * rng.uniform(1.5, 2.5)
    tip = edge + trace.normal * side * length + trace.axis * rng.uniform(-0.5, 0.5) * length
    _fill(board, mask, np.array([edge - half_base, edge + half_base, tip]), board.colours["copper"])
    return True


def _open(board: Board, rng: Rng, mask: np.ndarray) -> bool:
    """A slightly ragged gap of 3-6 px cut across a trace, bare board showing through."""
    trace = board.traces[int(rng.integers(len(board.traces)))]
    at = _spot(rng, trace, 12)
    if at is None:
        return False
    gap, reach = rng.uniform(1.5, 3.0), trace.normal * (trace.width / 2 + 0.5)
    skew = trace.axis * rng.uniform(-1.0, 1.0, 2)
    poly = np.array([at - trace.axis * gap - reach + skew[0], at + trace.axis * gap - reach + skew[0],
                     at + trace.axis * gap + reach + skew[1], at - trace.axis * gap + reach + skew[1]])
    _fill(board, mask, poly, board.colours["board"])
    return True


DEFECTS = (_missing_hole, _short, _spur, _open)  # CLASS_NAMES order


def _fill(board: Board, mask: np.ndarray, poly: np.ndarray, colour: tuple[int, int, int]) -> None:
    pts = np.round(poly).astype(np.int32)
    cv2.fillPoly(board.img, [pts], colour, cv2.LINE_AA)
    cv2.fillPoly(mask, [pts], 255)


def _box(mask: np.ndarray) -> Box:
    """The defect pixels' bounds plus MARGIN, grown about the centre to MIN_BOX, inside the image."""
    x, y, w, h = cv2.boundingRect(mask)
    bw, bh = max(w + 2 * MARGIN, MIN_BOX), max(h + 2 * MARGIN, MIN_BOX)
    x0, y0 = round(x + w / 2 - bw / 2), round(y + h / 2 - bh / 2)
    return max(x0, 0), max(y0, 0), min(x0 + bw, W), min(y0 + bh, H)


def _overlaps(box: Box, boxes: list[Box], gap: int = 4) -> bool:
    return any(box[0] < b[2] + gap and b[0] < box[2] + gap and box[1] < b[3] + gap and b[1] < box[3] + gap
               for b in boxes)


def _add_defect(board: Board, rng: Rng, cls: int, boxes: list[Box]) -> None:
    """Draw one defect of class `cls` clear of the defects already there; give up after 20 tries."""
    for _ in range(20):
        trial, mask = Board(board.img.copy(), board.colours, board.traces, board.pads), np.zeros((H, W), np.uint8)
        if DEFECTS[cls](trial, rng, mask) and mask.any():
            box = _box(mask)
            if not _overlaps(box, [b[1:] for b in boxes]):
                board.img[:] = trial.img
                boxes.append((cls, *box))
                return


def _finish(img: np.ndarray, rng: Rng) -> np.ndarray:
    """Uneven lighting, sensor noise and a slight blur."""
    gx, gy = np.meshgrid(np.linspace(-1, 1, W, dtype=np.float32), np.linspace(-1, 1, H, dtype=np.float32))
    a, b = rng.uniform(-15, 15, 2).astype(np.float32)
    light = a * gx + b * gy + rng.standard_normal((H, W), dtype=np.float32) * 4
    return cv2.GaussianBlur(cv2.add(img, cv2.merge([light] * 3), dtype=cv2.CV_8U), (3, 3), 0.6)


def render(rng: Rng) -> tuple[np.ndarray, list[str]]:
    """One BGR image and its YOLO label rows."""
    board = _layout(rng)
    boxes: list[tuple[int, ...]] = []
    n = int(rng.choice(5, p=[0.16, 0.28, 0.24, 0.16, 0.16]))
    for cls in rng.integers(len(CLASS_NAMES), size=n):
        _add_defect(board, rng, int(cls), boxes)
    rows = [f"{c} {(x0 + x1) / 2 / W:.6f} {(y0 + y1) / 2 / H:.6f} {(x1 - x0) / W:.6f} {(y1 - y0) / H:.6f}\n"
            for c, x0, y0, x1, y1 in boxes]
    return _finish(board.img, rng), rows


def _write_split(root: Path, split: str, n: int, seed: int, stream: int) -> None:
    for sub in ("images", "labels"):
        (root / sub / split).mkdir(parents=True)
    for i in range(n):
        img, rows = render(np.random.default_rng([seed, stream, i]))
        cv2.imwrite(str(root / "images" / split / f"{i:06d}.jpg"), img, [cv2.IMWRITE_JPEG_QUALITY, 95])
        (root / "labels" / split / f"{i:06d}.txt").write_text("".join(rows))


def _complete(root: Path, marker: str) -> bool:
    try:
        return (root / MARKER).read_text() == marker
    except OSError:
        return False


def build_once(root: Path, marker: str, write_splits: Callable[[Path], None]) -> Path:
    """A generated set under `root` unless a complete build with `marker` is there: `write_splits(tmp)` fills
    images/ and labels/ of a temp dir, which gets data.yaml and the marker last and is renamed into place."""
    if _complete(root, marker):
        return root / "data.yaml"
    if root.exists() and (foreign := sorted({p.name for p in root.iterdir()} - OWN_ENTRIES)):
        raise FileExistsError(f"{root} holds entries this generator did not write {foreign}; not replacing it")
    root.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{root.name}.", dir=root.parent))
    try:
        write_splits(tmp)
        data = {"path": str(root), "train": "images/train", "val": "images/val", "names": dict(enumerate(CLASS_NAMES))}
        (tmp / "data.yaml").write_text(yaml.safe_dump(data, sort_keys=False))
        (tmp / MARKER).write_text(marker)  # last: an interrupted build never looks complete
        shutil.rmtree(root, ignore_errors=True)
        os.replace(tmp, root)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return root / "data.yaml"


def make(root: Path, n_train: int = 256, n_val: int = 64, seed: int = 0) -> Path:
    """Build the set under `root` (unless a complete build with these parameters is there); its data.yaml."""
    root = Path(root).resolve()
    marker = json.dumps({"version": VERSION, "n_train": n_train, "n_val": n_val, "seed": seed}, sort_keys=True)

    def write(tmp: Path) -> None:
        _write_split(tmp, "train", n_train, seed, 0)
        _write_split(tmp, "val", n_val, seed, 1)

    return build_once(root, marker, write)


def preview(root: Path, n: int, out: Path) -> list[Path]:
    """The first n val images, 3x enlarged, with their label boxes and class names drawn on."""
    out.mkdir(parents=True, exist_ok=True)
    colours = [(255, 0, 255), (0, 255, 255), (255, 255, 0), (0, 0, 255)]
    written = []
    for label in sorted((root / "labels" / "val").glob("*.txt"))[:n]:
        img = cv2.resize(cv2.imread(str(root / "images" / "val" / f"{label.stem}.jpg")), None, fx=3, fy=3,
                         interpolation=cv2.INTER_NEAREST)
        for row in label.read_text().splitlines():
            c, cx, cy, w, h = row.split()
            x0, y0 = (float(cx) - float(w) / 2) * W * 3, (float(cy) - float(h) / 2) * H * 3
            x1, y1 = x0 + float(w) * W * 3, y0 + float(h) * H * 3
            cv2.rectangle(img, (round(x0), round(y0)), (round(x1), round(y1)), colours[int(c)], 1)
            cv2.putText(img, CLASS_NAMES[int(c)], (round(x0), round(y0) - 3), cv2.FONT_HERSHEY_PLAIN, 1.0,
                        colours[int(c)], 1)
        written.append(out / f"{label.stem}.png")
        cv2.imwrite(str(written[-1]), img)
    return written


def default_root(n_train: int, n_val: int, seed: int) -> Path:
    return OUT / "data" / f"small_objects-{n_train}-{n_val}-s{seed}"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--root", type=Path, help="default: bench/out/data/small_objects-<n_train>-<n_val>-s<seed>")
    p.add_argument("--n-train", type=int, default=256)
    p.add_argument("--n-val", type=int, default=64)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--preview", type=int, default=0, metavar="N",
                   help="also draw the boxes of the first N val images into <root>-preview/ (PNG)")
    a = p.parse_args()
    root = a.root or default_root(a.n_train, a.n_val, a.seed)
    print(make(root, a.n_train, a.n_val, a.seed))
    if a.preview:
        for path in preview(root.resolve(), a.preview, Path(f"{root.resolve()}-preview")):
            print(path)


if __name__ == "__main__":
    main()
