"""A few validation images with predicted and true boxes, for the W&B run (rank 0, once per validated epoch).

The same images every epoch, letterboxed as validation sees them, so boxes compare in one pixel space and
the panel shows how predictions improve. Runs the (unwrapped, EMA) model alone on rank 0: no collectives.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import cv2
import numpy as np
import torch

from yolo_ddp.data.dataset import DatasetIndex

SHOW_CONF = 0.25  # predictions below this are left off the picture (scoring still uses train.conf)
MAX_BOXES = 50


@dataclass
class Sample:
    image: np.ndarray  # (imgsz, imgsz, 3) uint8 RGB, letterboxed
    true_xyxy: np.ndarray  # (k, 4) letterboxed pixels
    true_cls: np.ndarray  # (k,)


def letterbox_sample(index: DatasetIndex, i: int, imgsz: int) -> Sample:
    bgr = cv2.imread(index.im_files[i])
    h, w = bgr.shape[:2]
    r = min(imgsz / h, imgsz / w)
    nw, nh = round(w * r), round(h * r)
    left, top = (imgsz - nw) // 2, (imgsz - nh) // 2
    canvas = np.full((imgsz, imgsz, 3), 114, np.uint8)  # Ultralytics' grey padding
    canvas[top:top + nh, left:left + nw] = cv2.resize(bgr, (nw, nh), interpolation=cv2.INTER_LINEAR)
    labels = np.asarray(index.labels_for(i), dtype=np.float32).reshape(-1, 5)
    cx, cy, bw, bh = (labels[:, 1] * nw + left, labels[:, 2] * nh + top, labels[:, 3] * nw, labels[:, 4] * nh)
    xyxy = np.stack([cx - bw / 2, cy - bh / 2, cx + bw / 2, cy + bh / 2], axis=1)
    return Sample(canvas[..., ::-1].copy(), xyxy, labels[:, 0].astype(int))


class ValPreview:
    """Loads its images on first use; `predict` returns W&B box payloads per image."""

    def __init__(self, index: DatasetIndex, names: dict[int, str], imgsz: int, scorer: Any, n: int):
        self.index, self.names, self.imgsz, self.scorer = index, names, imgsz, scorer
        self.n = min(n, len(index))
        self._samples: list[Sample] | None = None

    @property
    def samples(self) -> list[Sample]:
        if self._samples is None:
            self._samples = [letterbox_sample(self.index, i, self.imgsz) for i in range(self.n)]
        return self._samples

    @torch.no_grad()
    def predict(self, model: torch.nn.Module) -> list[tuple[np.ndarray, dict]]:
        if not self.samples:
            return []
        device = next(model.parameters()).device
        was_training = model.training
        model.eval()
        batch = torch.from_numpy(np.stack([s.image for s in self.samples])).permute(0, 3, 1, 2)
        preds = self.scorer.postprocess(model(batch.to(device).float() / 255))
        model.train(was_training)
        return [(s.image, self._boxes(s, p)) for s, p in zip(self.samples, preds, strict=True)]

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
