"""Pascal VOC XML and COCO JSON data sets, converted once per node into a YOLO set in the node-local cache.

`data.path` may name a VOC-style folder (images plus `Annotations/**/*.xml`, e.g. PKU-Market-PCB) or a COCO
`instances_*.json` (or a folder holding `annotations/instances_*.json`, or a Roboflow-style export's root with
`<split>/_annotations.coco.json`). Local rank 0 converts (yolo_ddp.data.foreign.voc,
yolo_ddp.data.foreign.coco: Ultralytics' `convert_coco`) into `<data.cache_dir>/converted/<kind>-<key>/`: symlinks to the
source images under `images/`, labels under the parallel `labels/`, `train.txt`, `val.txt` and a data.yaml. The
key hashes the annotation files and the split settings, so an edited annotation converts again.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
from collections.abc import Callable, Iterable
from pathlib import Path

import yaml

from yolo_ddp.data.foreign import coco, voc
from yolo_ddp.data.foreign.common import Converted, coco_jsons
from yolo_ddp.data.spec import DataError, publish_dir
from yolo_ddp.dist import local_rank_zero_first

_VERSION = "1"  # bump when the converted layout or the conversion rules change


def detect(path: Path) -> str | None:
    """'voc', 'coco' or None (a data.yaml or YOLO root)."""
    if path.is_file():
        return "coco" if path.suffix.lower() == ".json" else None
    if (path / "Annotations").is_dir() and next((path / "Annotations").rglob("*.xml"), None) is not None:
        return "voc"
    if coco_jsons(path):
        return "coco"
    return None


def convert_once(path: Path, kind: str, cache_dir: Path, val_fraction: float, split_seed: int) -> Path:
    """The converted set's data.yaml; local rank 0 converts when the cache lacks it, the other ranks wait."""
    # Absolute from here on: the data.yaml's `path` and the train.txt/val.txt lines are read relative to nothing
    # else, and the cache key (source paths) must not depend on the working directory.
    path = Path(path).expanduser().resolve()
    inputs = voc.inputs(path) if kind == "voc" else coco.inputs(path)
    key = _key(kind, inputs, val_fraction, split_seed)
    final = Path(cache_dir).expanduser().resolve() / "converted" / f"{kind}-{key}"
    convert: Callable[[Path, Path, float, int], Converted] = voc.convert if kind == "voc" else coco.convert
    error: Exception | None = None
    with local_rank_zero_first() as leader:
        if leader and not (final / "data.yaml").is_file():
            try:  # caught so the barrier completes and the waiting ranks fail fast instead of hanging
                _build(path, final, lambda out: convert(path, out, val_fraction, split_seed))
            except Exception as e:
                error = e
    if error is not None:
        raise error
    if not (final / "data.yaml").is_file():
        raise DataError(f"The converted {kind} set {final} is missing: local rank 0 failed to convert {path}; "
                        "see its log.")
    return final / "data.yaml"


def _key(kind: str, inputs: Iterable[Path], val_fraction: float, split_seed: int) -> str:
    h = hashlib.sha1(f"{kind} v{_VERSION} val={val_fraction!r} seed={split_seed}\n".encode())
    for p in sorted(inputs):
        st = p.stat()
        h.update(f"{p}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    return h.hexdigest()[:16]


def _build(source: Path, final: Path, convert: Callable[[Path], Converted]) -> None:
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.", dir=final.parent))
    try:
        os.chmod(tmp, 0o755)
        done = convert(tmp)
        for split, images in (("train", done.train), ("val", done.val)):
            # Lines name the links as they will lie after the rename, so /images/ -> /labels/ finds the labels.
            lines = [str(final / p.relative_to(tmp)) for p in images]
            (tmp / f"{split}.txt").write_text("".join(f"{line}\n" for line in lines))
        data = {"path": str(final), "train": "train.txt", "val": "val.txt", "names": dict(enumerate(done.names)),
                "source": str(source)}
        (tmp / "data.yaml").write_text(yaml.safe_dump(data, sort_keys=False))
        publish_dir(tmp, final, "data.yaml")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


