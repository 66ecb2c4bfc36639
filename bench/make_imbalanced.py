"""An imbalanced version of our drawn PCB set, for the `data.sampler=balanced` study (issue 24).

The same six defect classes, drawing and labels as `yolo_ddp/data/synthetic.py` (its `_write_split` itself),
but each defect's class is drawn with skewed probabilities instead of uniformly. The default shares, in
CLASS_NAMES order (missing_hole, mouse_bite, open_circuit, short, spur, spurious_copper), are 30/22/17/14/5/12,
so spur is the rarest class at about 5% of the instances. Val has the same skew, and is large enough (by
default) that the rare class has 30+ instances to be scored on.

Deterministic: the same arguments give the same bytes. Built once into a temporary sibling that is renamed into
place; a complete build with the same parameters is left alone. Prints the data.yaml and the class counts.

  python bench/make_imbalanced.py                                   # 512 train / 320 val at 256 px
  python bench/make_imbalanced.py --n-train 64 --n-val 32 --shares 40,25,18,12,5,0   # another skew
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # this checkout's yolo_ddp, not an installed one

from yolo_ddp.data.synthetic import (  # noqa: E402
    _JPEG_QUALITY,
    _MARKER,
    _VERSION,
    CLASS_NAMES,
    _is_complete,
    _swap_in,
    _write_split,
)

DEFAULT_SHARES = (30, 22, 17, 14, 5, 12)  # CLASS_NAMES order: spur is the rare class
CACHE = REPO / ".cache" / "yolo_ddp" / "bench"


def class_p(shares: Sequence[float]) -> list[float]:
    """Shares (any scale) normalised to one probability per class."""
    s = np.asarray(shares, np.float64)
    if s.shape != (len(CLASS_NAMES),) or (s < 0).any() or s.sum() <= 0:
        raise ValueError(f"need {len(CLASS_NAMES)} non-negative shares, not all zero; got {list(shares)}")
    return (s / s.sum()).tolist()


def default_root(n_train: int, n_val: int, img_size: int, seed: int, shares: Sequence[float]) -> Path:
    tag = "-".join(f"{x:g}" for x in shares)
    return CACHE / f"imbalanced-{n_train}-{n_val}-{img_size}-s{seed}-{tag}"


def _marker(n_train: int, n_val: int, img_size: int, seed: int, p: list[float]) -> str:
    params = {"version": _VERSION, "n_train": n_train, "n_val": n_val, "img_size": img_size, "seed": seed,
              "class_p": p, "jpeg_quality": _JPEG_QUALITY}
    return json.dumps(params, sort_keys=True)


def _build(tmp: Path, root: Path, n_train: int, n_val: int, img_size: int, seed: int, p: list[float]) -> None:
    """Both splits (their own seed streams, as synthetic.materialize) and a data.yaml pointing at `root`."""
    _write_split(tmp, "train", n_train, img_size, seed, 0, p)
    _write_split(tmp, "val", n_val, img_size, seed, 1, p)
    data = {"path": str(root), "train": "images/train", "val": "images/val", "names": dict(enumerate(CLASS_NAMES))}
    (tmp / "data.yaml").write_text(yaml.safe_dump(data, sort_keys=False))


def make(root: Path, n_train: int = 512, n_val: int = 320, img_size: int = 256, seed: int = 0,
         shares: Sequence[float] = DEFAULT_SHARES) -> Path:
    """Build the set under `root` once (atomically: a temporary sibling renamed into place); its data.yaml."""
    if min(n_train, n_val) < 1 or img_size < 32 or seed < 0:
        raise ValueError(f"need n_train, n_val >= 1, img_size >= 32, seed >= 0; got {n_train, n_val, img_size, seed}")
    root, p = Path(root).resolve(), class_p(shares)
    marker = _marker(n_train, n_val, img_size, seed, p)
    if _is_complete(root, marker):
        return root / "data.yaml"
    root.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{root.name}.", suffix=".tmp", dir=root.parent))
    try:
        os.chmod(tmp, 0o755)
        _build(tmp, root, n_train, n_val, img_size, seed, p)
        (tmp / _MARKER).write_text(marker)  # last: an interrupted build never looks complete
        _swap_in(tmp, root, marker)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)  # already gone after a successful rename
    return root / "data.yaml"


def class_counts(root: Path, split: str) -> list[int]:
    """Instances per class (CLASS_NAMES order) in one split's label files."""
    counts = np.zeros(len(CLASS_NAMES), np.int64)
    for path in sorted((Path(root) / "labels" / split).glob("*.txt")):
        for line in path.read_text().splitlines():
            counts[int(line.split()[0])] += 1
    return counts.tolist()


def counts_table(root: Path) -> str:
    """Markdown: per class, its train and val instances and share."""
    tr, va = class_counts(root, "train"), class_counts(root, "val")
    lines = ["| class | train | train share | val | val share |", "|---|---|---|---|---|"]
    for name, t, v in zip(CLASS_NAMES, tr, va, strict=True):
        lines.append(f"| {name} | {t} | {t / sum(tr):.1%} | {v} | {v / sum(va):.1%} |")
    lines.append(f"| all | {sum(tr)} | | {sum(va)} | |")
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--root", type=Path, help=f"default: {CACHE.relative_to(REPO)}/imbalanced-<parameters>")
    p.add_argument("--n-train", type=int, default=512)
    p.add_argument("--n-val", type=int, default=320)
    p.add_argument("--img-size", type=int, default=256)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--shares", default=",".join(map(str, DEFAULT_SHARES)),
                   help=f"comma list, one per class in the order {', '.join(CLASS_NAMES)}")
    a = p.parse_args()
    shares = [float(x) for x in a.shares.split(",")]
    root = a.root or default_root(a.n_train, a.n_val, a.img_size, a.seed, shares)
    data_yaml = make(root, a.n_train, a.n_val, a.img_size, a.seed, shares)
    print(f"{data_yaml}\n\n{counts_table(data_yaml.parent)}")


if __name__ == "__main__":
    main()
