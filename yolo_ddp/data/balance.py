"""`data.sampler=balanced`: YOLOv5's image weights, made to work under DDP.

Each image weighs the sum, over its boxes, of its classes' inverse instance frequency (YOLOv5's
`labels_to_image_weights`); an image without boxes weighs as one box of the most common class, so backgrounds
still appear, rarely (YOLOv5 never drew them). Every epoch draws as many images as the split holds, with replacement, from
a generator seeded by (seed, epoch): every rank computes the same draw without talking, then takes its own
positions of it (DistributedSampler's padding and stride), so the shards are disjoint and a mid-epoch resume
continues the same draw.
"""

from __future__ import annotations

import numpy as np
import torch

from yolo_ddp.data.dataset import DatasetIndex


def image_weights(index: DatasetIndex, nc: int) -> np.ndarray:
    """Per image: the sum of 1 / (instances of its class) over its boxes; backgrounds: the smallest class weight."""
    cls = np.asarray(index.labels[:, 0], np.int64)
    counts = np.bincount(cls, minlength=nc).astype(np.float64)
    class_w = np.where(counts > 0, 1.0 / np.maximum(counts, 1.0), 0.0)
    per_row = class_w[cls]
    offsets = np.asarray(index.offsets, np.int64)
    sums = np.add.reduceat(np.append(per_row, 0.0), offsets[:-1]) if len(per_row) else np.zeros(len(index))
    sums = np.where(np.diff(offsets) > 0, sums, 0.0)  # reduceat repeats the next row for empty images
    floor = class_w[class_w > 0].min() if (class_w > 0).any() else 1.0
    return np.where(sums > 0, sums, floor)


def epoch_draw(weights: np.ndarray, seed: int, epoch: int) -> list[int]:
    """The epoch's images, len(weights) of them drawn with replacement; the same on every rank."""
    g = torch.Generator().manual_seed(int(np.random.SeedSequence([seed, epoch, 0xBA1]).generate_state(1)[0]))
    return torch.multinomial(torch.as_tensor(weights, dtype=torch.float64), len(weights), replacement=True,
                             generator=g).tolist()


def rank_shard(order: list[int], rank: int, world: int) -> list[int]:
    """DistributedSampler(drop_last=False)'s share of `order`: padded from its start to a multiple of world."""
    total = -(-len(order) // world) * world
    padded = (order * (-(-total // max(len(order), 1))))[:total]
    return padded[rank:total:world]


def instances_seen(index: DatasetIndex, order: list[int], names: dict[int, str]) -> dict[str, int]:
    """Boxes per class over the epoch's draw: `seen_<name>` columns for metrics.csv and W&B."""
    counts = np.zeros(len(names), np.int64)
    per_image = [np.bincount(np.asarray(index.labels_for(i)[:, 0], np.int64), minlength=len(names))
                 for i in range(len(index))]
    for i in order:
        counts += per_image[i][: len(names)]
    return {f"seen_{names[c]}": int(counts[c]) for c in range(len(names))}
