"""Deterministic synthetic PCB-defect data set in YOLO format.

Smoke tests and offline CI need a detection set that trains from scratch to a non-zero mAP50 in a few CPU
epochs without a download. This one is drawn: byte-identical for the same arguments, with large high-contrast
defects whose boxes are exact because each box is measured on the pixels of the defect that was drawn.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Sequence
from pathlib import Path

import cv2
import numpy as np
import numpy.typing as npt
import yaml

CLASS_NAMES: tuple[str, ...] = (
    "missing_hole",
    "mouse_bite",
    "open_circuit",
    "short",
    "spur",
    "spurious_copper",
)

_VERSION = 1  # bump whenever the drawing changes, so cached builds with old pixels are rebuilt
_JPEG_QUALITY = 92
_MARKER = ".complete"
_OWN_ENTRIES = frozenset({"images", "labels", "data.yaml", _MARKER})
_MIN_BOX, _MARGIN, _CLEAR = 0.12, 0.02, 0.02  # fractions of the image side
_DIRS = np.array([(np.cos(a), np.sin(a)) for a in np.arange(8) * np.pi / 4])  # routers turn in 45° steps

Rng = np.random.Generator
Palette = dict[str, tuple[int, int, int]]
Drawn = tuple[np.ndarray, np.ndarray]  # (BGR canvas, defect mask)


def _palette(rng: Rng) -> Palette:
    """Jitter colours per image so the model keys on shape rather than on one exact hue."""
    b, c = (int(v) for v in rng.integers(-8, 9, 2))
    return {"board": (30 + b, 80 + b, 22), "copper": (55 + c, 135 + c, 205 + c // 2), "hole": (24, 24, 24)}


def _px(rng: Rng, lo: float, hi: float, s: int) -> int:
    """A length in pixels drawn from a range given in fractions of the image side, so any img_size works."""
    return int(round(rng.uniform(lo, hi) * s))


def _poly(pts: npt.ArrayLike) -> np.ndarray:
    return np.round(np.asarray(pts, dtype=np.float64)).astype(np.int32)


def _canvas(s: int, pal: Palette) -> Drawn:
    """A bare-board canvas with the defect at its centre, big enough that nothing drawn is clipped."""
    return np.full((s, s, 3), pal["board"], np.uint8), np.zeros((s, s), np.uint8)


def _fill(drawn: Drawn, poly: np.ndarray, colour: tuple[int, int, int]) -> Drawn:
    """Paint a defect polygon and record the same pixels in the mask its box is measured on."""
    cv2.fillPoly(drawn[0], [poly], colour, cv2.LINE_AA)
    cv2.fillPoly(drawn[1], [poly], 255)
    return drawn


def _box_half(extent: float, s: int) -> float:
    """Half side of the box around a defect of half extent `extent`: margin added, minimum side enforced."""
    return max(extent + _MARGIN * s, _MIN_BOX * s / 2)


def _pad(img: np.ndarray, c: tuple[int, int] | np.ndarray, r: int, pal: Palette, hole: bool = True) -> None:
    """A round pad; real through-hole pads are drilled, which is exactly what missing_hole leaves out."""
    centre = (int(c[0]), int(c[1]))
    cv2.circle(img, centre, r, pal["copper"], -1, cv2.LINE_AA)
    if hole:
        cv2.circle(img, centre, max(1, int(r * 0.4)), pal["hole"], -1, cv2.LINE_AA)


def _rail(img: np.ndarray, rng: Rng, pal: Palette, y: int, box_half: float, t: int, bend: int = 0) -> None:
    """A horizontal trace through the centre, ending in drilled pads beyond the defect's box.

    Pads, never bare ends, terminate every trace so only open_circuit shows cut copper. `bend` turns both
    tails 45° up (-1) or down (+1); 0 picks straight or random tails.
    """
    s = img.shape[1]
    rp = max(3, int(t * rng.uniform(0.9, 1.3)))
    half, c = int(box_half + rp + _px(rng, 0.01, 0.04, s)), s // 2
    e = _px(rng, 0.03, 0.06, s) if bend or rng.random() < 0.5 else 0
    sl, sr = (bend, bend) if bend else (int(v) for v in rng.choice([-1, 1], 2))
    pts = [(c - half - e, y + sl * e), (c - half, y), (c + half, y), (c + half + e, y + sr * e)]
    cv2.polylines(img, [_poly(pts)], False, pal["copper"], t, cv2.LINE_AA)
    _pad(img, pts[0], rp, pal)
    _pad(img, pts[-1], rp, pal)


def _missing_hole(rng: Rng, s: int, pal: Palette) -> Drawn:
    """A row of equal pads with one left undrilled, so the absent hole is the only cue."""
    img, mask = _canvas(s, pal)
    r, c = _px(rng, 0.04, 0.08, s), s // 2
    step, first = int(_box_half(r, s) + r + _px(rng, 0.02, 0.05, s)), -int(rng.integers(0, 3))
    for k in range(first, first + 3):
        if abs(k * step) + r < 0.48 * s:
            _pad(img, (c + k * step, c), r, pal, hole=k != 0)
    cv2.circle(mask, (c, c), r, 255, -1)
    return img, mask


def _mouse_bite(rng: Rng, s: int, pal: Palette) -> Drawn:
    """Semicircular bites taken out of a trace edge, the signature of over-etching."""
    img, mask = _canvas(s, pal)
    t, c = _px(rng, 0.05, 0.07, s), s // 2
    rn, span = max(3, int(t * rng.uniform(0.3, 0.42))), rng.uniform(0.06, 0.17) * s
    n = int(min(rng.integers(2, 5), span // (2 * rn + 2) + 1))
    _rail(img, rng, pal, c, _box_half(span / 2 + rn, s), t)
    sides = rng.choice([-1, 1], n) if rng.random() < 0.3 else np.full(n, rng.choice([-1, 1]))
    for x, side in zip(np.linspace(c - span / 2, c + span / 2, n), sides, strict=True):
        cv2.circle(img, (int(round(x)), int(c + side * t / 2)), rn, pal["board"], -1, cv2.LINE_AA)
        cv2.circle(mask, (int(round(x)), int(c + side * t / 2)), rn, 255, -1)
    mask[: c - t // 2 - 1], mask[c + t // 2 + 2 :] = 0, 0  # only the copper bitten away is the defect
    return img, mask


def _open_circuit(rng: Rng, s: int, pal: Palette) -> Drawn:
    """A ragged gap cut clean through a trace: copper on both sides, bare board between."""
    drawn, t, g, c = _canvas(s, pal), _px(rng, 0.04, 0.07, s), rng.uniform(0.04, 0.1) * s, s // 2
    _rail(drawn[0], rng, pal, c, _box_half(g / 2 + 0.01 * s, s), t)
    j, y0, y1 = rng.uniform(-0.01, 0.01, 4) * s, c - t / 2 - 2, c + t / 2 + 2
    gap = [(c - g / 2 + j[0], y0), (c + g / 2 + j[1], y0), (c + g / 2 + j[2], y1), (c - g / 2 + j[3], y1)]
    return _fill(drawn, _poly(gap), pal["board"])


def _short(rng: Rng, s: int, pal: Palette) -> Drawn:
    """A copper bridge between two neighbouring traces that fan out (45°) to their own pads."""
    drawn, t, c, wb = _canvas(s, pal), _px(rng, 0.03, 0.045, s), s // 2, rng.uniform(0.025, 0.05) * s
    d, slant = t + _px(rng, 0.035, 0.08, s), rng.uniform(-0.02, 0.02) * s
    top, bot = c - d // 2, c - d // 2 + d
    for y, bend in ((top, -1), (bot, 1)):
        _rail(drawn[0], rng, pal, y, _box_half(wb / 2 + abs(slant), s), t, bend)
    bridge = [(c - wb / 2, top), (c + wb / 2, top), (c + wb / 2 + slant, bot), (c - wb / 2 + slant, bot)]
    return _fill(drawn, _poly(bridge), pal["copper"])


def _spur(rng: Rng, s: int, pal: Palette) -> Drawn:
    """A thin, sharp copper spike leaving a trace edge at up to ±40° from the normal."""
    drawn, t, c, wb = _canvas(s, pal), _px(rng, 0.035, 0.06, s), s // 2, rng.uniform(0.02, 0.035) * s
    ls, a, side = rng.uniform(0.08, 0.16) * s, rng.uniform(-0.7, 0.7), int(rng.choice([-1, 1]))
    _rail(drawn[0], rng, pal, c, _box_half(abs(ls * np.sin(a)) + wb, s), t)
    ey = c + side * (t / 2 - 1)
    tip = (c + ls * np.sin(a), ey + side * ls * np.cos(a))
    return _fill(drawn, _poly([(c - wb / 2, ey), (c + wb / 2, ey), tip]), pal["copper"])


def _spurious_copper(rng: Rng, s: int, pal: Palette) -> Drawn:
    """An isolated irregular copper blob on bare board, touching nothing."""
    n, r = int(rng.integers(7, 12)), rng.uniform(0.035, 0.09) * s
    ang = np.linspace(0, 2 * np.pi, n, endpoint=False) + rng.uniform(-0.25, 0.25, n)
    rad = r * rng.uniform(0.55, 1.0, n)
    blob = np.stack([s / 2 + rad * np.cos(ang), s / 2 + rad * np.sin(ang)], axis=1)
    return _fill(_canvas(s, pal), _poly(blob), pal["copper"])


_RENDER = (_missing_hole, _mouse_bite, _open_circuit, _short, _spur, _spurious_copper)  # CLASS_NAMES order


def _cut(img: np.ndarray, mask: np.ndarray, s: int, pal: Palette) -> tuple[np.ndarray, np.ndarray]:
    """Crop what was drawn plus clearance; return it and the defect's box (x0, y0, x1, y1) within it.

    The box is the defect pixels' tight bounds plus a margin, grown about its centre to a minimum side so
    the smallest defects stay learnable at 320 px.
    """
    x, y, w, h = cv2.boundingRect(mask)
    bw, bh = max(w + 2 * _MARGIN * s, _MIN_BOX * s), max(h + 2 * _MARGIN * s, _MIN_BOX * s)
    box = np.array([x + w / 2 - bw / 2, y + h / 2 - bh / 2, x + w / 2 + bw / 2, y + h / 2 + bh / 2])
    ix, iy, iw, ih = cv2.boundingRect(255 - cv2.inRange(img, pal["board"], pal["board"]))
    lo = np.maximum(np.minimum([ix, iy], box[:2]) - _CLEAR * s, 0).astype(int)
    hi = np.minimum(np.maximum([ix + iw, iy + ih], box[2:]) + _CLEAR * s, s).astype(int)
    return img[lo[1] : hi[1], lo[0] : hi[0]], np.clip(box - np.tile(lo, 2), 0, np.tile(hi - lo, 2))


def _turn(patch: np.ndarray, box: np.ndarray, k: int, flip: bool) -> tuple[np.ndarray, np.ndarray]:
    """Rotate by k quarter turns (as np.rot90) and maybe mirror, so every defect shows in all 8 poses."""
    for _ in range(k):
        w = patch.shape[1]
        patch, box = np.rot90(patch), np.array([box[1], w - box[2], box[3], w - box[0]])
    if flip:
        w = patch.shape[1]
        patch, box = patch[:, ::-1], np.array([w - box[2], box[1], w - box[0], box[3]])
    return patch, box


def _place(img: np.ndarray, occ: np.ndarray, rng: Rng, cls: int, pal: Palette) -> np.ndarray | None:
    """Paste one defect where it overlaps nothing placed so far; return its box in image pixels."""
    s = img.shape[0]
    patch, box = _turn(*_cut(*_RENDER[cls](rng, s, pal), s, pal), int(rng.integers(4)), rng.random() < 0.5)
    ph, pw = patch.shape[:2]
    for _ in range(20):
        y, x = int(rng.integers(0, s - ph + 1)), int(rng.integers(0, s - pw + 1))
        if not occ[y : y + ph, x : x + pw].any():
            img[y : y + ph, x : x + pw] = patch
            occ[y : y + ph, x : x + pw] = True
            return box + [x, y, x, y]
    return None


def _route(rng: Rng, s: int) -> np.ndarray:
    """A start point and up to three legs turning by 45° or 90°; zero legs is a lone via."""
    p, d = rng.uniform(0, s, 2), int(rng.integers(4)) * 2
    pts = [p]
    for _ in range(int(rng.integers(0, 4))):
        p = p + _DIRS[d] * rng.uniform(0.08, 0.35) * s
        pts.append(p)
        d = (d + int(rng.choice([-2, -1, 1, 2]))) % 8
    return _poly(pts)


def _background(img: np.ndarray, occ: np.ndarray, rng: Rng, pal: Palette) -> None:
    """Ordinary traces and vias, each kept a clearance away from all copper already on the board.

    Copper that touched would itself be a short, and copper inside a defect's box would change what the box
    shows, so each candidate is first drawn fattened by the clearance and tested against the occupancy.
    """
    s = img.shape[0]
    c = max(2, int(_CLEAR * s))
    for _ in range(40):
        pts, t = _route(rng, s), _px(rng, 0.012, 0.03, s)
        rp = int(t * rng.uniform(1.3, 2.6))
        lo, hi = np.maximum(pts.min(0) - rp - c - t, 0), np.minimum(pts.max(0) + rp + c + t + 1, s)
        if (hi <= lo).any():
            continue  # entirely off the board
        win = np.zeros((hi[1] - lo[1], hi[0] - lo[0]), np.uint8)
        cv2.polylines(win, [pts - lo], False, 1, t + 2 * c)
        for p in (pts[0] - lo, pts[-1] - lo):
            cv2.circle(win, (int(p[0]), int(p[1])), rp + c, 1, -1)
        view, hit = occ[lo[1] : hi[1], lo[0] : hi[0]], win.astype(bool)
        if not (view & hit).any():
            view |= hit
            cv2.polylines(img, [pts], False, pal["copper"], t, cv2.LINE_AA)
            _pad(img, pts[0], rp, pal)
            _pad(img, pts[-1], rp, pal)


def _finish(img: np.ndarray, rng: Rng) -> np.ndarray:
    """Uneven lighting, sensor noise and slight defocus, so flat colours are not a shortcut."""
    g = np.linspace(-1, 1, img.shape[0], dtype=np.float32)
    a, b = rng.uniform(-12, 12, 2).astype(np.float32)
    field = a * g[None, :] + b * g[:, None] + rng.standard_normal(img.shape[:2], dtype=np.float32) * 5
    return cv2.GaussianBlur(cv2.add(img, cv2.merge([field] * 3), dtype=cv2.CV_8U), (3, 3), 0.8)


def _render(rng: Rng, s: int, class_p: Sequence[float] | None = None) -> tuple[np.ndarray, list[str]]:
    """One image and its label rows; about one image in ten is a defect-free background image."""
    pal = _palette(rng)
    img, occ, rows = np.full((s, s, 3), pal["board"], np.uint8), np.zeros((s, s), bool), []
    for _ in range(0 if rng.random() < 0.1 else int(rng.integers(1, 5))):
        n = len(CLASS_NAMES)  # class_p skews the draw (bench/make_imbalanced.py); None: uniform, as before
        cls = int(rng.integers(n)) if class_p is None else int(rng.choice(n, p=class_p))
        box = _place(img, occ, rng, cls, pal)
        if box is not None:
            (cx, cy), (w, h) = (box[:2] + box[2:]) / 2 / s, (box[2:] - box[:2]) / s
            rows.append(f"{cls} {cx:.6f} {cy:.6f} {w:.6f} {h:.6f}\n")
    _background(img, occ, rng, pal)
    return _finish(img, rng), rows


def _write_split(root: Path, split: str, n: int, s: int, seed: int, stream: int,
                 class_p: Sequence[float] | None = None) -> None:
    """Write one split; every image has its own seed stream, so train and val never share an image."""
    for sub in ("images", "labels"):
        (root / sub / split).mkdir(parents=True)
    for i in range(n):
        img, rows = _render(np.random.default_rng([seed, stream, i]), s, class_p)
        ok, buf = cv2.imencode(".jpg", img, [cv2.IMWRITE_JPEG_QUALITY, _JPEG_QUALITY])
        if not ok:
            raise RuntimeError(f"JPEG encoding failed for {split} image {i}")
        (root / "images" / split / f"{i:06d}.jpg").write_bytes(buf.tobytes())
        (root / "labels" / split / f"{i:06d}.txt").write_text("".join(rows))


def _is_complete(root: Path, marker: str) -> bool:
    try:
        return (root / _MARKER).read_text() == marker
    except OSError:
        return False


def _check_ours(root: Path) -> None:
    """Refuse to replace a path holding anything this generator would not have written."""
    if root.exists() and not root.is_dir():
        raise FileExistsError(f"{root} exists and is not a directory")
    foreign = sorted({p.name for p in root.iterdir()} - _OWN_ENTRIES) if root.is_dir() else []
    if foreign:
        raise FileExistsError(
            f"{root} holds entries this generator did not write {foreign}; not replacing it"
        )


def _swap_in(tmp: Path, root: Path, marker: str) -> None:
    """Move a finished build onto root, first removing a stale or interrupted one."""
    if _is_complete(root, marker):
        return  # a concurrent builder got there first, with identical content
    if root.exists():
        _check_ours(root)
        shutil.rmtree(root)
    try:
        os.replace(tmp, root)
    except OSError:
        if not _is_complete(root, marker):
            raise


def materialize(root: Path, n_train: int, n_val: int, img_size: int = 320, seed: int = 0) -> Path:
    """Build (once) a YOLO-format dataset under root and return the path of its data.yaml.

    The parameter marker is written last inside a temporary sibling that is then renamed onto `root`, so an
    interrupted build never looks complete and a matching marker means nothing is rewritten.
    """
    if min(n_train, n_val) < 1 or img_size < 32 or seed < 0:
        raise ValueError(
            f"need n_train, n_val >= 1, img_size >= 32, seed >= 0; got {n_train, n_val, img_size, seed}"
        )
    root = Path(root).resolve()
    params = {"version": _VERSION, "n_train": n_train, "n_val": n_val, "img_size": img_size, "seed": seed}
    marker = json.dumps({**params, "jpeg_quality": _JPEG_QUALITY}, sort_keys=True)
    if _is_complete(root, marker):
        return root / "data.yaml"
    _check_ours(root)  # fail before spending time on a build that could not be moved into place
    root.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{root.name}.", suffix=".tmp", dir=root.parent))
    try:
        os.chmod(tmp, 0o755)  # mkdtemp makes it 0700; other users and ranks must be able to read the set
        _write_split(tmp, "train", n_train, img_size, seed, 0)
        _write_split(tmp, "val", n_val, img_size, seed, 1)
        data = {
            "path": str(root),
            "train": "images/train",
            "val": "images/val",
            "names": dict(enumerate(CLASS_NAMES)),
        }
        (tmp / "data.yaml").write_text(yaml.safe_dump(data, sort_keys=False))
        (tmp / _MARKER).write_text(marker)
        _swap_in(tmp, root, marker)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)  # already gone after a successful rename
    return root / "data.yaml"
