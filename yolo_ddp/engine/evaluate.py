"""Distributed validation scored with Ultralytics' own NMS, matching and mAP code.

Each rank runs its shard (every image exactly once across ranks), keeps Ultralytics' per-image
stats, and rank 0 gathers and reduces them with `DetMetrics`. Boxes are compared in each batch's
letterboxed pixel space (a batch's (h, w) may differ from the next one's with rectangular validation,
`data.val_rect`): IoU is invariant to the letterbox's uniform scale and shift, so no mapping back to the
original image is needed for mAP.
"""

from __future__ import annotations

from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from ultralytics.models.yolo.detect import DetectionValidator
from ultralytics.utils import ops
from ultralytics.utils.metrics import DetMetrics

from yolo_ddp import dist


@dataclass(frozen=True)
class EvalResult:
    map50: float
    map50_95: float
    precision: float
    recall: float
    per_class_ap50_95: dict[str, float]
    images: int
    instances: int
    fitness: float = 0.0  # Ultralytics' own DetMetrics.fitness (8.4: mAP50-95 only): picks best.pt's epoch


def make_scorer(names: dict[int, str], conf: float, iou: float, max_det: int, save_dir: Path) -> DetectionValidator:
    """A DetectionValidator used only for its postprocess (NMS) and prediction matching."""
    scorer = DetectionValidator(
        save_dir=save_dir,
        args={"conf": conf, "iou": iou, "max_det": max_det, "plots": False, "save_json": False,
              "save_txt": False, "verbose": False},
    )
    scorer.end2end = False
    scorer.nc = len(names)
    scorer.names = names
    return scorer


def _targets(batch: dict, si: int, hw: tuple[int, int], device: torch.device) -> dict[str, torch.Tensor]:
    """Image si's labels in pixels of its batch: `bboxes` are xywh normalized to the batch's (h, w)."""
    idx = batch["batch_idx"] == si
    cls = batch["cls"][idx].squeeze(-1).to(device)
    boxes = batch["bboxes"][idx].to(device)
    if len(cls):
        boxes = ops.xywh2xyxy(boxes) * torch.tensor(hw, device=device)[[1, 0, 1, 0]]
    return {"cls": cls, "bboxes": boxes}


@torch.no_grad()
def evaluate(
    model: torch.nn.Module,
    loader,
    scorer: DetectionValidator,
    device: torch.device,
    amp_dtype: torch.dtype | None,
) -> EvalResult | None:
    """Returns the result on rank 0 and None elsewhere. `model` is a plain (unwrapped) module."""
    was_training = model.training
    model.eval()
    scorer.end2end = getattr(model, "end2end", False)
    stats: dict[str, list] = {"tp": [], "conf": [], "pred_cls": [], "target_cls": [], "target_img": []}
    autocast = torch.autocast(device.type, dtype=amp_dtype) if amp_dtype else nullcontext()
    for batch in loader:
        img = batch["img"].to(device, non_blocking=True).float() / 255
        with autocast:
            preds = model(img)
        for si, pred in enumerate(scorer.postprocess(preds)):
            target = _targets(batch, si, tuple(img.shape[2:]), device)
            tgt_cls = target["cls"].cpu().numpy()
            stats["tp"].append(scorer._process_batch(pred, target)["tp"])
            stats["conf"].append(pred["conf"].float().cpu().numpy())
            stats["pred_cls"].append(pred["cls"].cpu().numpy())
            stats["target_cls"].append(tgt_cls)
            stats["target_img"].append(np.unique(tgt_cls))
    model.train(was_training)

    gathered = dist.gather_objects(stats)
    if gathered is None:
        return None
    metrics = DetMetrics(names=scorer.names)
    for part in gathered:
        for key, values in part.items():
            metrics.stats[key].extend(values)
    n_images = len(metrics.stats["target_cls"])
    if n_images == 0:
        return EvalResult(0.0, 0.0, 0.0, 0.0, {}, 0, 0)
    metrics.process()
    box = metrics.box
    per_class = {scorer.names[int(c)]: float(box.maps[int(c)]) for c in box.ap_class_index}
    return EvalResult(
        map50=float(box.map50),
        map50_95=float(box.map),
        precision=float(box.mp),
        recall=float(box.mr),
        per_class_ap50_95=per_class,
        images=n_images,
        instances=int(sum(len(t) for t in metrics.stats["target_cls"])),
        fitness=float(metrics.fitness),
    )
