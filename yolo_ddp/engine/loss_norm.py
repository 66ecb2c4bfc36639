"""One loss normaliser per optimizer step, so how a step's images are split cannot change the update.

Ultralytics' `v8DetectionLoss` returns `batch * gains * S / max(tss, 1)` per forward, where `S` are the summed
box/cls/dfl terms and `tss` the sum of the assigner's target scores. Per forward, `tss` is the micro-batch's
own, and it is clamped at 1: while targets are small or scores low (early training, small defects) a micro-batch
is then barely normalised, so N ranks x b/N images, or accumulated micro-batches, train a different update than
one forward on all b images (Ultralytics' own DDP has this gap).

`train.loss_norm=global` (the default) gives every step the update of one forward on all its images:
each micro-batch back-propagates `gains * S_i * B / ref` (B: the step's images over all ranks, ref: the previous
step's total, which keeps gradient magnitudes near Ultralytics' for fp16 loss scaling), the step's `T = sum tss_i`
is summed over micro-batches and ranks, and the gradients are multiplied by `max(ref, 1) / max(T, 1)` before
clipping. The result is `B * gains * sum(S_i) / max(T, 1)`: the loss of one forward on the union batch.
`per_batch` keeps Ultralytics' per-forward normalisation. Criteria without one task-aligned assigner (end-to-end
heads, whose two branches normalise separately) always use `per_batch`.
"""

from __future__ import annotations

import torch

from yolo_ddp import dist


class LossNormaliser:
    def __init__(self, criterion, mode: str, device: torch.device) -> None:
        assigner = getattr(criterion, "assigner", None)
        self.mode = mode
        self.exact = mode == "global" and isinstance(assigner, torch.nn.Module)
        if self.exact:
            assigner.register_forward_hook(self._capture)
        self.reference = torch.ones((), device=device)  # the previous step's T; equal on every rank
        self._last: torch.Tensor | None = None
        self._sums: list[torch.Tensor] = []

    def _capture(self, module, inputs, outputs) -> None:
        self._last = outputs[2].detach().float().sum()  # target_scores: (batch, anchors, classes)

    def describe(self) -> str:
        if self.exact:
            return "per step (train.loss_norm=global)"
        if self.mode == "global":
            return ("per forward, as Ultralytics: train.loss_norm=global needs one task-aligned assigner, and this "
                    "head's loss (end-to-end: two branches, each normalised by its own targets) has none")
        return "per forward (train.loss_norm=per_batch)"

    def begin_step(self) -> None:
        self._sums = []

    def micro_loss(self, loss: torch.Tensor, micro_images: int, step_images: int) -> torch.Tensor:
        """The micro-batch's loss under the step's provisional normaliser (`loss` as the criterion returned it)."""
        if not self.exact:
            return loss
        tss = self._last
        self._sums.append(tss)
        return loss * (tss.clamp(min=1) / micro_images) * (step_images / self.reference.clamp(min=1))

    def finish_step(self) -> torch.Tensor | None:
        """The factor that turns the step's accumulated gradients into the union batch's; None for per_batch.
        One scalar all-reduce per optimizer step (on the device: no host sync)."""
        if not self.exact:
            return None
        total = dist.all_reduce_sum_(torch.stack(self._sums).sum())
        factor = self.reference.clamp(min=1) / total.clamp(min=1)
        self.reference = total
        return factor
