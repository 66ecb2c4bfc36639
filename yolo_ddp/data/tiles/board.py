"""Detections on tiles → detections on their board: undo the letterbox, shift by the window, merge the seams.

Two steps, chosen so that a board's detections are those a whole-image pass gives wherever every object lies
whole inside some window (tests/test_tiles.py):
1. `keep_whole`: a box that touches a window edge inside the board and is narrower (or shorter) there than the
   windows' overlap is a cut view of an object that lies whole in the neighbouring window: dropped.
2. `merge`: class-aware NMS (torchvision's `batched_nms`; Ultralytics' NMS is class-aware too) at the validator's
   IoU over the remaining boxes: an object whole in two overlapping windows gives the same box twice (IoU near
   1), one is kept; then the most confident `max_det`.
SAHI's greedy merging (NMM) instead unites overlapping boxes into their union, which rebuilds objects larger than
the overlap from their parts, but it also grows a whole box by any neighbour it overlaps; defects on boards are
small against the overlap, so cut views are dropped and whole boxes kept as they are.
"""

from __future__ import annotations

import torch
from torchvision.ops import batched_nms
from ultralytics.utils import ops

Detections = dict[str, torch.Tensor]  # bboxes (n, 4) xyxy pixels, conf (n,), cls (n,)


def to_board(boxes: torch.Tensor, batch_hw: tuple[int, int], window_hw: tuple[int, int], ratio_pad,
             window: tuple[int, int, int, int]) -> torch.Tensor:
    """xyxy boxes in a (letterboxed) batch image → pixels of the board the window was cut from. `ratio_pad` is
    the sample's ((gain_h, gain_w), (pad_w, pad_h)), as Ultralytics' validator passes it to `scale_boxes`."""
    out = ops.scale_boxes(batch_hw, boxes.clone().float(), window_hw, ratio_pad=ratio_pad)  # clipped to the window
    out[:, [0, 2]] += window[0]
    out[:, [1, 3]] += window[1]
    return out


def keep_whole(dets: Detections, window: tuple[int, int, int, int], board_hw: tuple[int, int], overlap_px: int,
               margin: float = 1.0) -> Detections:
    """`dets` (board pixels) minus the cut views: boxes within `margin` px of an edge of `window` that is not the
    board's edge, and smaller than `overlap_px` across that edge."""
    x0, y0, x1, y1 = window
    h, w = board_hw
    b = dets["bboxes"]
    bw, bh = b[:, 2] - b[:, 0], b[:, 3] - b[:, 1]
    cut = torch.zeros(len(b), dtype=torch.bool)
    for edge_inside, touches, size in ((x0 > 0, b[:, 0] <= x0 + margin, bw), (x1 < w, b[:, 2] >= x1 - margin, bw),
                                       (y0 > 0, b[:, 1] <= y0 + margin, bh), (y1 < h, b[:, 3] >= y1 - margin, bh)):
        if edge_inside:
            cut |= touches & (size < overlap_px)
    return {k: v[~cut] for k, v in dets.items()}


def empty() -> Detections:
    return {"bboxes": torch.zeros((0, 4)), "conf": torch.zeros(0), "cls": torch.zeros(0)}


def merge(parts: list[Detections], iou: float, max_det: int) -> Detections:
    """One board's detections from its tiles' (already in board pixels)."""
    if not parts:
        return empty()
    boxes = torch.cat([p["bboxes"].float() for p in parts])
    conf = torch.cat([p["conf"].float() for p in parts])
    cls = torch.cat([p["cls"].float() for p in parts])
    keep = batched_nms(boxes, conf, cls.long(), iou)[:max_det]  # sorted by confidence, highest first
    return {"bboxes": boxes[keep], "conf": conf[keep], "cls": cls[keep]}
