"""A few validation images with predicted and true boxes, for the W&B run (rank 0, once per validated epoch).

The same images every epoch, letterboxed by the validation transforms (`rect`: each into the rectangle a
one-image Ultralytics validation batch gets, so shapes differ between images), so boxes compare in one pixel
space and the panel shows how predictions improve. Runs the (unwrapped, EMA) model alone on rank 0, one image
per forward: no collectives.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from ultralytics.utils import ops

from yolo_ddp.data.dataset import DatasetIndex
from yolo_ddp.data.torch_loader import YoloDataset, val_batches

SHOW_CONF = 0.25  # predictions below this are left off the picture (scoring still uses train.conf)
MAX_BOXES = 50


@dataclass
class Sample:
    image: np.ndarray  # (h, w, 3) uint8 RGB, letterboxed as validation sees it
    true_xyxy: np.ndarray  # (k, 4) letterboxed pixels
    true_cls: np.ndarray  # (k,)


def val_samples(index: DatasetIndex, ids: list[int], imgsz: int, rect: bool) -> list[Sample]:
    """Images `ids` through the torch backend's validation transforms, each as a batch of one."""
    shapes = None
    if rect:
        shapes = {i: val_batches(index.shapes[[i]], imgsz, 1, 0, 1)[0][1] for i in ids}
    ds = YoloDataset(index, imgsz, augment=False, rect_shapes=shapes)
    out = []
    for i in ids:
        s = ds[i]
        h, w = s["img"].shape[1:]
        xyxy = ops.xywh2xyxy(s["bboxes"]) * torch.tensor([w, h, w, h])
        out.append(Sample(s["img"].permute(1, 2, 0).numpy().copy(), xyxy.numpy(), s["cls"].view(-1).int().numpy()))
    return out


class ValPreview:
    """Loads its images on first use; `predict` returns W&B box payloads per image."""

    def __init__(self, index: DatasetIndex, names: dict[int, str], imgsz: int, scorer: Any, n: int,
                 rect: bool = True):
        self.index, self.names, self.imgsz, self.scorer, self.rect = index, names, imgsz, scorer, rect
        self.n = min(n, len(index))
        self._samples: list[Sample] | None = None

    @property
    def samples(self) -> list[Sample]:
        if self._samples is None:
            self._samples = val_samples(self.index, list(range(self.n)), self.imgsz, self.rect)
        return self._samples

    @torch.no_grad()
    def predict(self, model: torch.nn.Module) -> list[tuple[np.ndarray, dict]]:
        if not self.samples:
            return []
        device = next(model.parameters()).device
        was_training = model.training
        model.eval()
        out = []
        for s in self.samples:  # one forward each: rectangles differ in shape
            img = torch.from_numpy(s.image).permute(2, 0, 1)[None].to(device).float() / 255
            out.append((s.image, self._boxes(s, self.scorer.postprocess(model(img))[0])))
        model.train(was_training)
        return out

    def _boxes(self, sample: Sample, pred: dict[str, torch.Tensor]) -> dict:
        keep = pred["conf"] >= SHOW_CONF
        boxes, conf, cls = (pred[k][keep][:MAX_BOXES].float().cpu().numpy() for k in ("bboxes", "conf", "cls"))
        predicted = [_box(b, int(c), f"{self.names[int(c)]} {p:.2f}", {"conf": float(p)})
                     for b, p, c in zip(boxes, conf, cls, strict=True)]
        truth = [_box(b, int(c), self.names[int(c)]) for b, c in zip(sample.true_xyxy, sample.true_cls, strict=True)]
        labels = {int(k): v for k, v in self.names.items()}
        return {"predictions": {"box_data": predicted, "class_labels": labels},
                "ground_truth": {"box_data": truth, "class_labels": labels}}


def _box(xyxy: np.ndarray, cls: int, caption: str, scores: dict | None = None) -> dict:
    box = {"position": {"minX": float(xyxy[0]), "minY": float(xyxy[1]), "maxX": float(xyxy[2]),
                        "maxY": float(xyxy[3])}, "domain": "pixel", "class_id": cls, "box_caption": caption}
    if scores:
        box["scores"] = scores
    return box
