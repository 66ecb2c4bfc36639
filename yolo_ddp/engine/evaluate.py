"""Distributed validation scored with Ultralytics' own NMS, matching and mAP code.

Each rank runs its shard (every image exactly once across ranks), keeps Ultralytics' per-image
stats, and rank 0 gathers and reduces them with `DetMetrics`. Boxes are compared in each batch's
letterboxed pixel space (a batch's (h, w) may differ from the next one's with rectangular validation,
`data.val_rect`): IoU is invariant to the letterbox's uniform scale and shift, so no mapping back to the
original image is needed for mAP.

Under `data.tile` the score is per board: every validation image is cut into the training windows, the ranks
predict the windows, rank 0 maps each window's detections back to its board and merges them
(yolo_ddp/data/tiles/board.py), and the merged detections are matched against the board's own labels in board
pixels. The whole-image score (what `yolo val` at the same imgsz gives) is computed beside it.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import nullcontext
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from ultralytics.models.yolo.detect import DetectionValidator
from ultralytics.utils import ops
from ultralytics.utils.metrics import DetMetrics

from yolo_ddp import dist
from yolo_ddp.config import DataConfig
from yolo_ddp.data.dataset import DatasetIndex
from yolo_ddp.data.loaders import build_val_loader
from yolo_ddp.data.tiles import board
from yolo_ddp.data.tiles.index import overlap_px, tile_index


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
    whole: EvalResult | None = None  # data.tile: the whole-image score beside this per-board one


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


def _predictions(model: torch.nn.Module, loader, scorer: DetectionValidator, device: torch.device,
                 amp_dtype: torch.dtype | None) -> Iterator[tuple[dict, tuple[int, int], int, dict]]:
    """(batch, its (h, w), sample si, si's detections after Ultralytics' NMS) over the loader, in eval mode."""
    was_training = model.training
    model.eval()
    scorer.end2end = getattr(model, "end2end", False)
    autocast = torch.autocast(device.type, dtype=amp_dtype) if amp_dtype else nullcontext()
    try:
        for batch in loader:
            img = batch["img"].to(device, non_blocking=True).float() / 255
            with torch.no_grad(), autocast:
                preds = model(img)
            for si, pred in enumerate(scorer.postprocess(preds)):
                yield batch, tuple(img.shape[2:]), si, pred
    finally:
        model.train(was_training)


@torch.no_grad()
def evaluate(
    model: torch.nn.Module,
    loader,
    scorer: DetectionValidator,
    device: torch.device,
    amp_dtype: torch.dtype | None,
) -> EvalResult | None:
    """Returns the result on rank 0 and None elsewhere. `model` is a plain (unwrapped) module."""
    stats: dict[str, list] = {"tp": [], "conf": [], "pred_cls": [], "target_cls": [], "target_img": []}
    for batch, hw, si, pred in _predictions(model, loader, scorer, device, amp_dtype):
        _append(stats, scorer, pred, _targets(batch, si, hw, device))
    gathered = dist.gather_objects(stats)
    return None if gathered is None else reduce_stats(gathered, scorer.names)


def reduce_stats(parts: list[dict[str, list]], names: dict[int, str]) -> EvalResult:
    """Ultralytics' DetMetrics over the per-image stats of every rank."""
    metrics = DetMetrics(names=names)
    for part in parts:
        for key, values in part.items():
            metrics.stats[key].extend(values)
    n_images = len(metrics.stats["target_cls"])
    if n_images == 0:
        return EvalResult(0.0, 0.0, 0.0, 0.0, {}, 0, 0)
    metrics.process()
    box = metrics.box
    per_class = {names[int(c)]: float(box.maps[int(c)]) for c in box.ap_class_index}
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


def _append(stats: dict[str, list], scorer: DetectionValidator, pred: dict, target: dict) -> None:
    tgt_cls = target["cls"].cpu().numpy()
    stats["tp"].append(scorer._process_batch(pred, target)["tp"])
    stats["conf"].append(pred["conf"].float().cpu().numpy())
    stats["pred_cls"].append(pred["cls"].cpu().numpy())
    stats["target_cls"].append(tgt_cls)
    stats["target_img"].append(np.unique(tgt_cls))


def board_targets(boards: DatasetIndex, j: int) -> dict[str, torch.Tensor]:
    """Board j's labels in its own pixels."""
    rows = torch.from_numpy(np.array(boards.labels_for(j), np.float32))
    h, w = (int(v) for v in boards.shapes[j])
    boxes = ops.xywh2xyxy(rows[:, 1:]) * torch.tensor([w, h, w, h], dtype=torch.float32)
    return {"cls": rows[:, 0], "bboxes": boxes.reshape(-1, 4)}


def score_boards(detections: dict[str, list[board.Detections]], boards: DatasetIndex, scorer: DetectionValidator,
                 iou: float) -> EvalResult:
    """Every board scored once: its tiles' detections merged, matched against its own labels."""
    stats: dict[str, list] = {"tp": [], "conf": [], "pred_cls": [], "target_cls": [], "target_img": []}
    for j, f in enumerate(boards.im_files):
        _append(stats, scorer, board.merge(detections.get(f, []), iou, scorer.args.max_det), board_targets(boards, j))
    return reduce_stats([stats], scorer.names)


@torch.no_grad()
def evaluate_boards(model: torch.nn.Module, loader, tiles: DatasetIndex, boards: DatasetIndex,
                    scorer: DetectionValidator, device: torch.device, amp_dtype: torch.dtype | None,
                    overlap_px: int) -> EvalResult | None:
    """data.tile: mAP per board from its windows' detections (rank 0; None elsewhere)."""
    board_hw = {f: (int(h), int(w)) for f, (h, w) in zip(boards.im_files, boards.shapes, strict=True)}
    found: dict[str, list[tuple[int, board.Detections]]] = {}  # board -> (window sample, its detections)
    for batch, hw, si, pred in _predictions(model, loader, scorer, device, amp_dtype):
        i, f = int(batch["index"][si]), tiles.im_files[int(batch["index"][si])]
        boxes = board.to_board(pred["bboxes"], hw, tuple(batch["ori_shape"][si]), batch["ratio_pad"][si],
                               tiles.window(i))
        dets = {"bboxes": boxes.cpu(), "conf": pred["conf"].float().cpu(), "cls": pred["cls"].float().cpu()}
        found.setdefault(f, []).append((i, board.keep_whole(dets, tiles.window(i), board_hw[f], overlap_px)))
    gathered = dist.gather_objects(found)
    if gathered is None:
        return None
    merged: dict[str, list[tuple[int, board.Detections]]] = {}
    for part in gathered:
        for f, dets in part.items():
            merged.setdefault(f, []).extend(dets)
    # In window order, whichever rank predicted which: NMS keeps the first of equally confident boxes, so the
    # merge (and the score) is the same for every world size.
    merged = {f: [d for _, d in sorted(parts, key=lambda p: p[0])] for f, parts in merged.items()}
    return score_boards(merged, boards, scorer, scorer.args.iou)


@dataclass(frozen=True)
class Validation:
    """One validation pass per call on the run's weights: whole images; or, under data.tile, each board from its
    windows (the result best.pt is chosen on) with the whole-image score as its `whole`."""

    loader: Any
    scorer: DetectionValidator
    device: torch.device
    amp_dtype: torch.dtype | None
    tiles: tuple[Any, DatasetIndex, DatasetIndex, int] | None = None  # window loader and index, boards, overlap px

    def __call__(self, model: torch.nn.Module) -> EvalResult | None:
        whole = evaluate(model, self.loader, self.scorer, self.device, self.amp_dtype)
        if self.tiles is None:
            return whole
        per_board = evaluate_boards(model, *self.tiles[:3], self.scorer, self.device, self.amp_dtype, self.tiles[3])
        return None if per_board is None else replace(per_board, whole=whole)


def make_validation(data: DataConfig, backend: str, index: DatasetIndex, batch_per_rank: int, device: torch.device,
                    rank: int, world: int, scorer: DetectionValidator, amp_dtype: torch.dtype | None,
                    store: Any = None) -> Validation:
    loader = build_val_loader(data, backend, index, batch_per_rank, device, rank, world, store)
    tiles = None
    if data.tile:
        windows, _ = tile_index(index, data.tile, data.tile_overlap, data.tile_min_visible)
        tiles = (build_val_loader(data, backend, windows, batch_per_rank, device, rank, world), windows, index,
                 overlap_px(data.tile, data.tile_overlap))
    return Validation(loader, scorer, device, amp_dtype, tiles)
