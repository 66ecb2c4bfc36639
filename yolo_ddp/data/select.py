"""`yolo train`'s label selection on an indexed split: `fraction`, `classes` and `single_cls`.

Applied after indexing, so the node-shared index cache stays the whole split and one cache serves every
selection. The rules are Ultralytics' (`BaseDataset.get_img_files` and `update_labels`): the first part of the
sorted image list, rows of the listed class ids only (images left without rows train as backgrounds), and every
class id 0 under single_cls, whose one class is named "item".
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import numpy as np
from ultralytics.data.utils import get_split_fraction

from yolo_ddp.config import DataConfig
from yolo_ddp.data.dataset import DatasetIndex

SINGLE_CLASS_NAMES = {0: "item"}  # Ultralytics' trainer names the one class so


def class_names(data: DataConfig, names: dict[int, str]) -> dict[int, str]:
    """The names the model trains with: the data set's, or Ultralytics' single class."""
    if data.classes is not None:
        wanted = [data.classes] if isinstance(data.classes, int) else list(data.classes)
        unknown = sorted(set(wanted) - set(names))
        if unknown:
            raise ValueError(
                f"Config key 'data.classes': class id(s) {unknown} are not in the data set, whose ids are "
                f"0..{len(names) - 1} ({', '.join(f'{k}={v}' for k, v in names.items())}). Use those ids."
            )
    return dict(SINGLE_CLASS_NAMES) if data.single_cls else dict(names)


def select(index: DatasetIndex, data: DataConfig, split: str) -> DatasetIndex:
    """The images and label rows of `split` that `data.fraction`, `data.classes` and `data.single_cls` keep."""
    fraction: Any = get_split_fraction(list(data.fraction) if isinstance(data.fraction, (list, tuple))
                                       else data.fraction, split)
    n = len(index)
    count = fraction if isinstance(fraction, int) else max(1, round(n * fraction))
    if count >= n and data.classes is None and not data.single_cls:
        return index
    keep = np.arange(min(count, n))
    rows = [np.asarray(index.labels_for(int(i)), np.float32) for i in keep]
    if data.classes is not None:
        wanted = np.array([data.classes] if isinstance(data.classes, int) else list(data.classes), np.float32)
        rows = [r[np.isin(r[:, 0], wanted)] for r in rows]
    if data.single_cls:
        rows = [np.concatenate([np.zeros_like(r[:, :1]), r[:, 1:]], 1) for r in rows]
    offsets = np.zeros(len(keep) + 1, np.int64)
    offsets[1:] = np.cumsum([len(r) for r in rows])
    labels = np.concatenate(rows).astype(np.float32) if rows else np.zeros((0, 5), np.float32)
    return replace(index, im_files=[index.im_files[i] for i in keep], shapes=np.asarray(index.shapes)[keep],
                   labels=labels.reshape(-1, 5), offsets=offsets, cache_path=None)


def describe(data: DataConfig, before: int, after: int, split: str) -> str | None:
    parts = []
    if after != before:
        parts.append(f"data.fraction={data.fraction}: {after} of {before} images")
    if data.classes is not None:
        parts.append(f"data.classes={data.classes}: other classes' boxes dropped")
    if data.single_cls:
        parts.append("data.single_cls: every box is class 0 'item'")
    return f"{split}: " + "; ".join(parts) if parts else None
