"""`data.cache=ram|disk`: every image decoded and resized once per node, read by every rank and loader worker.

Ultralytics' `cache=ram` fills a Python list in each rank (8 ranks, 8 copies: ultralytics#22307). Here local
rank 0 decodes each image as Ultralytics' `load_image` does (BGR, long side imgsz, cv2.INTER_LINEAR), writes
them side by side into one flat uint8 file, and every process memory-maps that file: one copy per node, shared
through the page cache. `ram` puts the file on tmpfs (/dev/shm, or $YOLO_DDP_SHM_DIR), where it stays for the
next run until deleted or the node reboots; `disk` under `data.cache_dir/images`.

A store is a directory named after the split, imgsz and the image list; `meta.json` records a key over every
file's size and mtime. It is written into a temporary directory (space reserved with posix_fallocate, so a full
disk fails before writing) and renamed into place with `meta.json` last: a build cut off half-way, or one that
ran out of space, leaves nothing a later run trusts. A changed source file changes the key, and the store is
rebuilt in place.
"""

from __future__ import annotations

import errno
import hashlib
import json
import logging
import math
import os
import shutil
import socket
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cv2
import numpy as np
from ultralytics.utils.patches import imread

from yolo_ddp.data.dataset import DatasetIndex
from yolo_ddp.data.spec import DataError, publish_dir
from yolo_ddp.dist import local_rank_zero_first

LOGGER = logging.getLogger(__name__)
_VERSION = "1"  # bump when what is stored (resize rule, colour order, layout) changes
SAFETY_MARGIN = 0.5  # Ultralytics' check_cache_ram / check_cache_disk: need x (1 + margin) must fit
SHM_ENV = "YOLO_DDP_SHM_DIR"  # where data.cache=ram lives: this tmpfs, /dev/shm unless set
_GIB = 1 << 30
_ARRAYS = ("shapes", "hw0", "offsets")


def load_image_size(hw0: tuple[int, int], imgsz: int) -> tuple[int, int]:
    """(h, w) after Ultralytics' `BaseDataset.load_image` (rect_mode): long side imgsz, sides rounded up."""
    h0, w0 = int(hw0[0]), int(hw0[1])
    r = imgsz / max(h0, w0)
    if r == 1:
        return h0, w0
    return min(math.ceil(h0 * r), imgsz), min(math.ceil(w0 * r), imgsz)


def read_bgr(path: str, window: tuple[int, int, int, int] | None = None) -> np.ndarray:
    """The source pixels as Ultralytics reads them: BGR HWC uint8, EXIF orientation applied (as the index's shapes);
    `window` (x0, y0, x1, y1, data.tile) crops them."""
    img = imread(path)
    if img is None:
        raise FileNotFoundError(f"Image {path} could not be read although it passed indexing; was it changed?")
    if window is not None:
        x0, y0, x1, y1 = window
        img = np.ascontiguousarray(img[y0:y1, x0:x1])
    return img


def load_resized(path: str, imgsz: int, window: tuple[int, int, int, int] | None = None,
                 ) -> tuple[np.ndarray, tuple[int, int]]:
    """Ultralytics' `load_image` without its cache: BGR HWC uint8, long side imgsz, and the original (h, w) (of the
    window, under data.tile)."""
    img = read_bgr(path, window)
    hw0 = img.shape[:2]
    h, w = load_image_size(hw0, imgsz)
    if (h, w) != hw0:
        img = cv2.resize(img, (w, h), interpolation=cv2.INTER_LINEAR)
    return img, hw0


@dataclass
class ImageStore:
    """Read side of a published store: image i is `pixels[offsets[i]:offsets[i+1]]` shaped (h, w, 3)."""

    root: Path
    shapes: np.ndarray  # (N, 2) stored (h, w): long side imgsz
    hw0: np.ndarray  # (N, 2) original (h, w)
    offsets: np.ndarray  # (N + 1,) byte offsets
    mode: str = "ram"
    note: str = field(default="", compare=False)  # how this run got it (built or reused), for the log
    _pixels: np.ndarray | None = field(default=None, repr=False, compare=False)

    def __len__(self) -> int:
        return len(self.shapes)

    @property
    def nbytes(self) -> int:
        return int(self.offsets[-1])

    def image(self, i: int) -> tuple[np.ndarray, tuple[int, int]]:
        """Image i as `load_resized` returns it, as a read-only view of the shared file (copy before editing)."""
        if self._pixels is None:  # opened lazily, so each DataLoader/DALI worker maps the file itself
            self._pixels = np.memmap(self.root / "pixels.u8", np.uint8, "r", shape=(self.nbytes,))
        h, w = (int(v) for v in self.shapes[i])
        flat = self._pixels[int(self.offsets[i]) : int(self.offsets[i + 1])]
        return flat.reshape(h, w, 3), (int(self.hw0[i][0]), int(self.hw0[i][1]))

    def describe(self) -> str:
        return (f"data.cache={self.mode}: {len(self)} images, {_size(self.nbytes)} at {self.root} "
                f"({self.note}), one copy shared by this node's ranks and workers")

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_pixels": None}  # workers map the file; never pickle its pages


def _images(n: int, split: str, imgsz: int) -> str:
    return f"the {n} '{split}' images decoded at data.imgsz={imgsz}"


def _files_key(files: list[str], imgsz: int, windows: np.ndarray | None) -> str:
    h = hashlib.sha1(f"v{_VERSION} {imgsz}\n{chr(10).join(files)}".encode())
    if windows is not None:
        h.update(np.ascontiguousarray(windows, np.int64).tobytes())
    return h.hexdigest()[:16]


def _content_key(files: list[str]) -> str:
    h = hashlib.sha1()
    for f in dict.fromkeys(files):  # a tiled index lists a file once per window
        st = os.stat(f)
        h.update(f"{f}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    return h.hexdigest()[:16]


def shm_dir() -> Path:
    return Path(os.environ.get(SHM_ENV) or "/dev/shm")


def store_root(mode: str, cache_dir: Path) -> Path:
    return shm_dir() / "yolo_ddp" if mode == "ram" else Path(cache_dir).expanduser() / "images"


def _size(n: float) -> str:
    return f"{n / _GIB:.2f} GiB" if n >= _GIB / 10 else f"{n / (1 << 20):.1f} MiB"


def _others(root: Path) -> str:
    """What earlier runs' stores hold in `root`, and how to drop them (a ram store outlives its job, for reuse)."""
    stores = [d for d in root.glob("*-*") if d.is_dir()] if root.is_dir() else []
    if not stores:
        return ""
    held = sum(f.stat().st_size for d in stores for f in d.iterdir())
    return (f" Earlier runs' stores in {root} hold {_size(held)} ({len(stores)} stores, kept for reuse): delete "
            f"those no longer needed with `rm -r {root}/<split>-<imgsz>-<key>`.")


def host_available_bytes() -> int:
    """MemAvailable from /proc/meminfo: what the kernel can give without swapping."""
    with open("/proc/meminfo") as f:
        info = {line.split(":")[0]: int(line.split()[1]) * 1024 for line in f}
    return info["MemAvailable"]


def _free_bytes(path: Path) -> int:
    while not path.exists():
        path = path.parent
    return shutil.disk_usage(path).free


def check_room(need: int, mode: str, root: Path, images: str) -> None:
    """Refuse a store that cannot fit, before anything is written: need x (1 + SAFETY_MARGIN), as Ultralytics.
    `images` says which, e.g. "the 800 'train' images decoded at data.imgsz=640"."""
    want = need * (1 + SAFETY_MARGIN)
    what = f"data.cache={mode}: {images} need {_size(need)}"
    if mode == "ram":
        free, shm = host_available_bytes(), _free_bytes(root)
        if want > min(free, shm):
            raise DataError(
                f"{what} ({want / _GIB:.2f} GiB with Ultralytics' {SAFETY_MARGIN:.0%} safety margin), but this node "
                f"has {free / _GIB:.2f} GiB of host memory available and {shm / _GIB:.2f} GiB free in {shm_dir()}. "
                f"Use data.cache=disk (one memory-mapped file under data.cache_dir, read through the page cache), a "
                f"smaller data.imgsz, or data.cache=false. In Docker, --shm-size sets the {shm_dir()} limit."
                + _others(root)
            )
    elif want > (free := _free_bytes(root)):
        raise DataError(
            f"{what} ({want / _GIB:.2f} GiB with Ultralytics' {SAFETY_MARGIN:.0%} safety margin), but the disk of "
            f"{root} has {free / _GIB:.2f} GiB free. Free space there, point data.cache_dir at a larger local disk, "
            f"or set data.cache=false."
        )


def _load(final: Path, mode: str, content: str, note: str) -> ImageStore | None:
    """The published store at `final` when it is complete and matches `content`; None otherwise."""
    try:
        meta = json.loads((final / "meta.json").read_text())
        arrays = {name: np.load(final / f"{name}.npy") for name in _ARRAYS}
        size = (final / "pixels.u8").stat().st_size
    except (OSError, ValueError):
        return None
    if meta.get("content") != content or size != meta.get("nbytes") or size != int(arrays["offsets"][-1]):
        return None
    return ImageStore(final, arrays["shapes"], arrays["hw0"], arrays["offsets"], mode, note)


def _layout(shapes0: np.ndarray, imgsz: int) -> tuple[np.ndarray, np.ndarray]:
    shapes = np.array([load_image_size(hw, imgsz) for hw in shapes0], np.int64).reshape(-1, 2)
    offsets = np.zeros(len(shapes) + 1, np.int64)
    offsets[1:] = np.cumsum(shapes[:, 0] * shapes[:, 1] * 3)
    return shapes, offsets


def _sweep_stale(root: Path, name: str) -> None:
    """Remove temp dirs of builds of `name` on this host whose process is gone (a killed build)."""
    host = socket.gethostname()
    for tmp in root.glob(f".{name}.{host}.*.tmp"):
        pid = tmp.name.rsplit(".", 2)[-2]
        if pid.isdigit() and not _alive(int(pid)):
            shutil.rmtree(tmp, ignore_errors=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _fill(pixels: np.ndarray, files: list[str], imgsz: int, shapes: np.ndarray, offsets: np.ndarray,
          windows: np.ndarray | None) -> None:
    def one(i: int) -> None:
        img, _ = load_resized(files[i], imgsz, None if windows is None else tuple(int(v) for v in windows[i]))
        if img.shape[:2] != tuple(shapes[i]):
            raise DataError(
                f"{files[i]} decodes to {img.shape[1]}x{img.shape[0]} at data.imgsz={imgsz}, but its indexed size "
                f"gives {shapes[i][1]}x{shapes[i][0]}: the file changed since indexing, or its EXIF orientation "
                "disagrees with its pixels. Re-save the image, or set data.cache=false."
            )
        pixels[offsets[i] : offsets[i + 1]] = img.reshape(-1)

    with ThreadPoolExecutor(max_workers=min(16, os.cpu_count() or 1)) as ex:  # cv2 decodes outside the GIL
        list(ex.map(one, range(len(files))))


def _build(final: Path, files: list[str], shapes0: np.ndarray, imgsz: int, content: str,
           windows: np.ndarray | None = None) -> None:
    """Write the store into a temp dir beside `final` and rename it into place; nothing is left on failure."""
    shapes, offsets = _layout(shapes0, imgsz)
    nbytes = int(offsets[-1])
    tmp = final.parent / f".{final.name}.{socket.gethostname()}.{os.getpid()}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        with open(tmp / "pixels.u8", "wb+") as fh:
            try:
                os.posix_fallocate(fh.fileno(), 0, max(nbytes, 1))  # a full disk fails here, not as SIGBUS later
            except OSError as e:
                if e.errno not in (errno.ENOSPC, errno.EDQUOT):
                    raise
                raise DataError(
                    f"data.cache: no room to write {_size(nbytes)} at {final.parent} ({e.strerror}); nothing "
                    "was kept. Free space there, use the other data.cache mode, or set data.cache=false."
                ) from e
            fh.truncate(nbytes)
            if nbytes:
                pixels = np.memmap(fh, np.uint8, "r+", shape=(nbytes,))
                _fill(pixels, files, imgsz, shapes, offsets, windows)
                pixels.flush()
                del pixels
            os.fsync(fh.fileno())
        hw0 = np.asarray(shapes0, np.int64).reshape(-1, 2)
        for name, arr in (("shapes", shapes), ("hw0", hw0), ("offsets", offsets)):
            np.save(tmp / f"{name}.npy", arr)
        meta = {"version": _VERSION, "imgsz": imgsz, "n": len(files), "nbytes": nbytes, "content": content}
        (tmp / "meta.json").write_text(json.dumps(meta))  # last: its presence marks a complete store
        if final.exists():
            shutil.rmtree(final)  # stale content (a source changed); mapped readers keep their pages
        publish_dir(tmp, final, "meta.json")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def open_store(files: list[str], shapes0: np.ndarray, imgsz: int, mode: str, cache_dir: Path,
               split: str, windows: np.ndarray | None = None) -> ImageStore:
    """This split's store, built by local rank 0 when missing or stale while the node's other ranks wait.

    `shapes0`: the index's original (h, w) per sample; `windows`: its data.tile crops. Raises DataError (every
    rank) when it cannot be built.
    """
    root, final = store_root(mode, cache_dir), _final(files, imgsz, mode, cache_dir, split, windows)
    content = _content_key(files)
    error: Exception | None = None
    note = "reused"
    with local_rank_zero_first() as leader:
        if leader and _load(final, mode, content, note) is None:
            # Catch so the barrier still completes: waiting ranks then fail fast instead of hanging.
            try:
                root.mkdir(parents=True, exist_ok=True)
                _sweep_stale(root, final.name)
                need = int(_layout(shapes0, imgsz)[1][-1])
                check_room(need, mode, root, _images(len(files), split, imgsz))
                t0 = time.perf_counter()
                _build(final, files, shapes0, imgsz, content, windows)
                note = f"built in {time.perf_counter() - t0:.1f} s"
            except Exception as e:
                error = e
    if error is not None:
        raise error
    store = _load(final, mode, content, note)
    if store is None:
        raise DataError(
            f"data.cache={mode}: the '{split}' image store {final} is missing or incomplete after local rank 0 "
            "built it; see local rank 0's log for the reason, or set data.cache=false."
        )
    return store


def _final(files: list[str], imgsz: int, mode: str, cache_dir: Path, split: str,
           windows: np.ndarray | None = None) -> Path:
    return store_root(mode, cache_dir) / f"{split}-{imgsz}-{_files_key(files, imgsz, windows)}"


def pending_bytes(indexes: dict[str, DatasetIndex], imgsz: int, mode: str, cache_dir: Path) -> int:
    """Bytes the run's stores still have to write (0 where a valid store exists, already in use on the node),
    after refusing, in one paragraph, stores that together cannot fit. Called before the memory plan, which
    counts the result against host memory on CPU (data.cache=ram)."""
    if not indexes:
        return 0
    todo = {split: index for split, index in indexes.items()
            if _load(_final(index.im_files, imgsz, mode, cache_dir, split, index.windows), mode, _content_key(index.im_files), "") is None}
    need = sum(int(_layout(index.shapes, imgsz)[1][-1]) for index in todo.values())
    if todo:
        images = " and ".join(f"the {len(ix)} '{split}'" for split, ix in todo.items())
        check_room(need, mode, store_root(mode, cache_dir), f"{images} images decoded at data.imgsz={imgsz}")
    return need


def open_stores(indexes: dict[str, DatasetIndex], imgsz: int, mode: str, cache_dir: Path,
                ) -> dict[str, ImageStore]:
    """Every split's store (`open_store`), in the same order on every rank."""
    return {split: open_store(index.im_files, index.shapes, imgsz, mode, cache_dir, split, index.windows)
            for split, index in indexes.items()}
