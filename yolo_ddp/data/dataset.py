"""Index a data set's images + labels once per node.

Ultralytics' `cache=ram` copies every image into each rank; its label cache is a pickled list of dicts that each
rank loads into its own heap. Here local rank 0 verifies images and parses labels once, writes flat numpy arrays,
and every rank memory-maps them, so one copy per node lives in the OS page cache.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import shutil
import tempfile
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image
from ultralytics.data.utils import IMG_FORMATS, exif_size, img2label_paths
from ultralytics.utils import patches
from ultralytics.utils.ops import segments2boxes

from yolo_ddp.data.spec import DataError, abspath_keep_links, publish_dir
from yolo_ddp.dist import get_rank, local_rank_zero_first

LOGGER = logging.getLogger(__name__)
_CACHE_VERSION = "2"  # bump when the on-disk layout or the label rules change
_TOL = 0.01  # Ultralytics accepts coordinates up to 1% outside [0, 1]; we accept the same and clip
_ARRAYS = ("shapes", "labels", "offsets")
# Importing ultralytics patches PIL's Image.open to pip-install pi-heif on the first unidentifiable file; a corrupt
# image must not trigger package installs from the indexing threads, so verify with Pillow's own opener.
_pil_open = getattr(patches, "_image_open", Image.open)


@dataclass
class DatasetIndex:
    im_files: list[str]
    shapes: np.ndarray  # (N, 2) int32 original (h, w)
    labels: np.ndarray  # (M, 5) float32 rows [cls, cx, cy, w, h], normalized
    offsets: np.ndarray  # (N + 1,) int64, labels of image i are labels[offsets[i]:offsets[i+1]]
    skipped: list[str] = field(default_factory=list)  # corrupt/unreadable images left out, "path: reason"
    duplicates_removed: int = 0
    polygons_converted: int = 0  # segmentation rows trained as their boxes
    # data.tile: (N, 4) x0, y0, x1, y1 of each sample's window in its image (yolo_ddp/data/tiles); None: whole
    # images. `shapes` and `labels` are then the windows'.
    windows: np.ndarray | None = None
    cache_path: Path | None = field(default=None, repr=False, compare=False)  # where the memmaps live

    def __len__(self) -> int:
        return len(self.im_files)

    def window(self, i: int) -> tuple[int, int, int, int] | None:
        """Sample i's crop (x0, y0, x1, y1) of its image file, or None for the whole image."""
        return None if self.windows is None else tuple(int(v) for v in self.windows[i])

    def labels_for(self, i: int) -> np.ndarray:
        """(k, 5) rows of image i; a read-only view when memory-mapped, so copy before editing in place."""
        return self.labels[int(self.offsets[i]) : int(self.offsets[i + 1])]

    def __getstate__(self) -> dict[str, Any]:
        # Pickling a memmap copies its data; spawned DataLoader workers reopen the files instead.
        state = dict(self.__dict__)
        if self.cache_path is not None:
            state.update(dict.fromkeys(_ARRAYS))
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        if self.cache_path is not None:
            for name in _ARRAYS:
                setattr(self, name, np.load(self.cache_path / f"{name}.npy", mmap_mode="r"))


def _is_image(name: str) -> bool:
    return name.rpartition(".")[-1].lower() in IMG_FORMATS


def _list_images(sources: list[Path]) -> tuple[list[str], list[str]]:
    """Image files by extension, and the other files found (reported, not indexed: label .txt files
    sitting beside their images would otherwise turn every image into a silent background)."""
    files: list[str] = []
    ignored: list[str] = []
    for src in map(Path, sources):
        if src.is_dir():
            for d, _, names in os.walk(src, followlinks=True):
                files += [os.path.join(d, n) for n in names if _is_image(n)]
                ignored += [os.path.join(d, n) for n in names if not _is_image(n) and not n.startswith(".")]
        elif src.is_file() and src.suffix.lower() == ".txt":
            # Relative lines resolve against the list's folder (Ultralytics writes './images/...' lists at the root).
            lines = [s.strip() for s in src.read_text(encoding="utf-8-sig").splitlines()]
            files += [str(abspath_keep_links(s, src.parent)) for s in lines if s and _is_image(s)]
            ignored += [f"{src}:{n}" for n, s in enumerate(lines, 1) if s and not _is_image(s)]
        elif src.is_file() and _is_image(src.name):
            files.append(str(src))
        else:
            raise DataError(
                f"Dataset source {src} is not an image folder, a .txt list of images or an image file "
                f"({', '.join(sorted(IMG_FORMATS))}). Fix that train/val entry in data.yaml."
            )
    return sorted(files), sorted(ignored)


def _stat(f: str) -> tuple[int, int]:
    try:
        st = os.stat(f)
        return st.st_size, st.st_mtime_ns
    except OSError:
        return -1, -1


def _cache_key(files: list[str], label_files: list[str], nc: int) -> str:
    h = hashlib.sha1(f"v{_CACHE_VERSION} nc={nc}\n".encode())
    for im, lb in zip(files, label_files, strict=True):
        h.update(f"{im}\0{_stat(im)}\0{_stat(lb)}\n".encode())
    return h.hexdigest()[:16]


def _verify_image(f: str) -> tuple[tuple[int, int] | None, str]:
    """Cheap integrity check: header + PIL verify; a full decode only for JPEGs missing their end marker."""
    try:
        with _pil_open(f) as im:
            im.verify()
            w, h = exif_size(im)
            fmt = (im.format or "").lower()
        if fmt not in IMG_FORMATS | {"jpeg2000"}:
            return None, f"unsupported image format {fmt or 'unknown'}"
        if h < 10 or w < 10:
            return None, f"image size {w}x{h} is below 10 pixels"
        if fmt in {"jpeg", "jpg"}:
            with open(f, "rb") as fh:
                fh.seek(-2, os.SEEK_END)
                if fh.read() != b"\xff\xd9":  # trailing bytes decode fine, truncated data raises here
                    with _pil_open(f) as im:
                        im.load()
        return (h, w), ""
    except Exception as e:  # any failure to read means the image can't train
        return None, " ".join(f"{type(e).__name__}: {e}".split())


def _read_labels(lb_file: str, nc: int) -> tuple[np.ndarray, int, int]:
    """Validated (k, 5) rows of one label file, how many exact duplicate rows were dropped, and how many
    segmentation polygons (`class x1 y1 x2 y2 ...`) became their boxes, as Ultralytics' YOLODataset does."""
    try:
        text = Path(lb_file).read_text(encoding="utf-8-sig")
    except FileNotFoundError:
        return np.zeros((0, 5), np.float32), 0, 0  # background image
    rows: dict[tuple[float, ...], None] = {}  # insertion-ordered set
    dups = polygons = boxes = 0  # polygon and box rows seen
    fmt = "YOLO detection labels are 'class cx cy w h' per line, or 'class x1 y1 x2 y2 x3 y3 ...' polygons"
    for ln, line in enumerate(text.splitlines(), 1):
        parts = line.split()
        if not parts:
            continue
        where = f"{lb_file}:{ln}"
        if len(parts) != 5 and (len(parts) < 7 or len(parts) % 2 == 0):
            raise DataError(
                f"{where}: expected 5 numbers, found {len(parts)} in {line.strip()!r} (a polygon is a class and 3 "
                f"or more x y pairs); {fmt}. Fix that row."
            )
        try:
            c, *coords = (float(x) for x in parts)
        except ValueError as e:
            raise DataError(f"{where}: {line.strip()!r} holds a non-number; {fmt}. Fix that row.") from e
        if not (c.is_integer() and 0 <= c < nc):
            raise DataError(
                f"{where}: class id {parts[0]} is not an integer in [0, {nc}). Fix the id, or add the class to "
                "'names' in data.yaml."
            )
        is_polygon = len(parts) > 5
        polygons, boxes = polygons + is_polygon, boxes + (not is_polygon)
        if boxes and polygons:  # Ultralytics drops such an image as corrupt ("labels mix segment and detection rows")
            raise DataError(
                f"{where}: this file mixes box rows (5 numbers) and polygon rows, which Ultralytics refuses. Write "
                "every object of the file as a box, or every object as a polygon."
            )
        # A box's size before its range: a negative width is an empty box, not a scale mistake.
        if not is_polygon and not (coords[2] > 0 and coords[3] > 0):
            raise DataError(
                f"{where}: box width and height must be > 0, got {parts[3:]}. Fix or delete that row."
            )
        if not all(math.isfinite(v) and -_TOL <= v <= 1 + _TOL for v in coords):
            raise DataError(
                f"{where}: coordinates {parts[1:]} are not normalized to [0, 1]; {fmt} with coordinates divided by "
                "the image width and height. Divide pixel coordinates by the image size."
            )
        box = segments2boxes([np.array(coords).reshape(-1, 2)])[0].tolist() if is_polygon else coords
        if not (box[2] > 0 and box[3] > 0):
            raise DataError(
                f"{where}: the polygon encloses no area (its box is {box[2]:g} x {box[3]:g}). Fix or delete that row."
            )
        row = (c, *(min(max(v, 0.0), 1.0) for v in box))
        if row in rows:
            dups += 1
        rows[row] = None
    return np.array(list(rows), np.float32).reshape(-1, 5), dups, polygons


def _build(files: list[str], label_files: list[str], nc: int, final: Path) -> None:
    """Verify, parse and write the index into a temp dir, then rename it into place atomically."""
    with ThreadPoolExecutor(max_workers=min(16, os.cpu_count() or 1)) as ex:
        checks = list(ex.map(_verify_image, files))
    keep = [i for i, (shape, _) in enumerate(checks) if shape is not None]
    skipped = [f"{files[i]}: {reason}" for i, (shape, reason) in enumerate(checks) if shape is None]
    if not keep:
        raise DataError(
            f"None of the {len(files)} images for {final.name} could be read (first: {skipped[0]}). Fix or replace "
            "the image files."
        )
    parsed = [_read_labels(label_files[i], nc) for i in keep]
    offsets = np.zeros(len(keep) + 1, np.int64)
    offsets[1:] = np.cumsum([len(rows) for rows, _, _ in parsed])
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.", dir=final.parent))
    try:
        np.save(tmp / "shapes.npy", np.array([checks[i][0] for i in keep], np.int32).reshape(-1, 2))
        np.save(tmp / "labels.npy", np.concatenate([rows for rows, _, _ in parsed]).astype(np.float32))
        np.save(tmp / "offsets.npy", offsets)
        meta = {"im_files": [files[i] for i in keep], "skipped": skipped,
                "duplicates_removed": sum(d for _, d, _ in parsed), "polygons_converted": sum(p for _, _, p in parsed)}
        (tmp / "meta.json").write_text(json.dumps(meta))
        publish_dir(tmp, final, "meta.json")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _load(final: Path) -> DatasetIndex:
    meta = json.loads((final / "meta.json").read_text())
    arrays = [np.load(final / f"{name}.npy", mmap_mode="r") for name in _ARRAYS]
    return DatasetIndex(
        meta["im_files"], *arrays, meta["skipped"], meta["duplicates_removed"], meta["polygons_converted"],
        cache_path=final
    )


def build_index(sources: list[Path], nc: int, cache_dir: Path, split: str) -> DatasetIndex:
    """Index a split; local rank 0 builds the cache when missing, then every rank memory-maps it."""
    files, ignored = _list_images(sources)
    if not files:
        raise DataError(
            f"No images ({', '.join(sorted(IMG_FORMATS))}) found for split '{split}' in "
            f"{', '.join(map(str, sources))}. Fix the '{split}' entry in data.yaml."
        )
    label_files = img2label_paths(files)
    final = Path(cache_dir) / f"{split}-{_cache_key(files, label_files, nc)}"
    error: Exception | None = None
    with local_rank_zero_first() as leader:
        if leader and not (final / "meta.json").is_file():
            # Catch so the barrier still completes: waiting ranks then fail fast instead of hanging.
            try:
                _build(files, label_files, nc, final)
            except Exception as e:
                error = e
    if error is not None:
        raise error
    if not (final / "meta.json").is_file():
        raise DataError(
            f"The '{split}' index cache {final} is missing: local rank 0 failed to build it; see its log."
        )
    index = _load(final)
    if get_rank() == 0:
        _report(index, ignored, split)
    return index


def _report(index: DatasetIndex, ignored: list[str], split: str) -> None:
    """What indexing left out or changed, once per job, with the fix."""
    if ignored:
        LOGGER.warning(
            "%s: ignored %d file(s) that are not images (%s); first: %s. Labels belong in the parallel labels/ "
            "folder; move other files out of the image folders to silence this warning.",
            split, len(ignored), ", ".join(sorted(IMG_FORMATS)), "; ".join(ignored[:3]),
        )
    if index.skipped:
        LOGGER.warning(
            "%s: skipped %d corrupt or unreadable image(s); first: %s. Fix or delete them to silence this warning.",
            split, len(index.skipped), "; ".join(index.skipped[:3]),
        )
    if index.polygons_converted:
        LOGGER.info(
            "%s: %d segmentation polygon row(s) converted to their boxes (Ultralytics' segments2boxes), as `yolo "
            "train` does for detection.", split, index.polygons_converted,
        )
    if index.duplicates_removed:
        LOGGER.warning(
            "%s: removed %d duplicate label row(s) (same class and box twice in one file). Delete the repeated "
            "rows to silence this warning.", split, index.duplicates_removed,
        )
