"""Choose what fits: the per-rank micro-batch (`train.batch=auto`), and the downgrade ladder when nothing does.

Ladder, in this order, each rung only where `train.allow_downgrade` lists its kind and each step logged:
  amp    → turn on mixed precision (halves activations) when the device supports it;
  batch  → a smaller per-rank micro-batch; accumulation keeps the nominal batch (and below 16 images per
           rank, `sync_bn=auto` turns SyncBatchNorm on so BN statistics still see enough images);
  imgsz  → 640 → 512 → 416 → 320 (stride multiples), activations scale with pixels;
  model  → the next smaller model of the family (yolov8x → l → m → s → n).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field, replace

from yolo_ddp.memory.estimate import Estimate, GiB

DOWNGRADES = ("amp", "batch", "imgsz", "model")
IMGSZ_LADDER = (640, 512, 416, 320)
MODEL_SCALES = "xlmsn"  # largest to smallest


class MemoryPlanError(ValueError):
    """Nothing allowed fits; the message says what was tried and which knob would help. `need` and `budget`
    (bytes per rank) are the smallest candidate's estimate and the budget it missed (0 for a config error)."""

    def __init__(self, message: str, need: int = 0, budget: int = 0):
        super().__init__(message)
        self.need, self.budget = need, budget


@dataclass(frozen=True)
class Candidate:
    model_cfg: str
    imgsz: int
    amp: str
    batch_per_rank: int


@dataclass(frozen=True)
class MemoryPlan:
    chosen: Candidate
    estimate: Estimate
    budget: int  # usable bytes per rank: free memory x safety fraction
    free: int
    device: str
    steps: tuple[str, ...] = field(default=())  # what was downgraded, in order, with before/after numbers

    @property
    def need(self) -> int:
        return self.estimate.total(self.chosen.batch_per_rank)

    def describe(self) -> str:
        c = self.chosen
        rows = [f"Memory plan per rank on {self.device}: {c.model_cfg} at {c.imgsz} px, amp={c.amp}, "
                f"micro-batch {c.batch_per_rank}"]
        rows += [f"  {name:<28} {b / GiB:8.3f} GiB" for name, b in self.estimate.components(c.batch_per_rank).items()]
        rows.append(f"  {'total':<28} {self.need / GiB:8.3f} GiB of {self.budget / GiB:.3f} GiB budget "
                    f"({self.free / GiB:.2f} GiB free)")
        rows += [f"  downgrade: {s}" for s in self.steps]
        return "\n".join(rows)

    def as_dict(self) -> dict:
        return {**self.chosen.__dict__, "need_GiB": round(self.need / GiB, 3), "budget_GiB": round(self.budget / GiB, 3),
                "components_GiB": {k: round(v / GiB, 4) for k, v in
                                   self.estimate.components(self.chosen.batch_per_rank).items()},
                "downgrades": list(self.steps)}


def smaller_model(cfg: str) -> str | None:
    """yolov8m.yaml → yolov8s.yaml; None at the smallest or for a custom yaml."""
    m = re.fullmatch(r"(yolov8|yolo11|yolo26|yolov5|yolov9|yolov10)([nsmlx])(\.ya?ml)", cfg)
    if not m or m.group(2) == "n":
        return None
    return f"{m.group(1)}{MODEL_SCALES[MODEL_SCALES.index(m.group(2)) + 1]}{m.group(3)}"


def largest_fitting(est: Estimate, budget: int, cap: int) -> int:
    """Largest micro-batch in [1, cap] whose estimate fits the budget; 0 when even one image does not."""
    room = budget - est.fixed
    return 0 if room < est.bytes_per_image else min(cap, room // max(est.bytes_per_image, 1))


def plan_memory(
    start: Candidate,
    auto_batch: bool,
    batch_cap: int,
    budget: int,
    free: int,
    device: str,
    allow: tuple[str, ...],
    best_amp: str,
    estimate_for: Callable[[str, int, str], Estimate],
) -> MemoryPlan:
    """Walk the ladder from `start` until the estimate fits `budget`.

    `estimate_for(model_cfg, imgsz, amp)` measures one configuration (the probe); `best_amp` is the AMP mode
    the device supports ("off" where none). With `auto_batch`, the micro-batch is the largest that fits, up
    to `batch_cap`; otherwise `start.batch_per_rank` is kept unless "batch" may shrink it.
    """
    unknown = set(allow) - set(DOWNGRADES)
    if unknown:
        raise MemoryPlanError(f"Config key 'train.allow_downgrade': unknown kind(s) {sorted(unknown)}; "
                              f"choose from {list(DOWNGRADES)}.")
    cand, steps = start, []
    est = estimate_for(cand.model_cfg, cand.imgsz, cand.amp)

    def fits(c: Candidate, e: Estimate) -> bool:
        return e.total(c.batch_per_rank) <= budget

    def settle_batch(c: Candidate, e: Estimate) -> Candidate:
        if auto_batch:
            return replace(c, batch_per_rank=max(1, largest_fitting(e, budget, batch_cap)))
        return c

    cand = settle_batch(cand, est)
    if auto_batch and largest_fitting(est, budget, batch_cap) >= 1:
        return MemoryPlan(cand, est, budget, free, device, ())

    def note(kind: str, before: Candidate, after: Candidate, e_before: Estimate, e_after: Estimate) -> None:
        steps.append(f"{kind}: {_short(before)} needs {e_before.total(before.batch_per_rank) / GiB:.2f} GiB → "
                     f"{_short(after)} needs {e_after.total(after.batch_per_rank) / GiB:.2f} GiB "
                     f"(budget {budget / GiB:.2f} GiB)")

    if not fits(cand, est) and "amp" in allow and cand.amp == "off" and best_amp != "off":
        new = replace(cand, amp=best_amp)
        new_est = estimate_for(new.model_cfg, new.imgsz, new.amp)
        new = settle_batch(new, new_est)
        note("amp", cand, new, est, new_est)
        cand, est = new, new_est
    wanted = start.batch_per_rank if not auto_batch else batch_cap  # what lower rungs may give back
    if not fits(cand, est) and ("batch" in allow or auto_batch) and cand.batch_per_rank > 1:
        new = replace(cand, batch_per_rank=max(1, largest_fitting(est, budget, cand.batch_per_rank)))
        note("batch", cand, new, est, est)
        cand = new
    while not fits(cand, est) and "imgsz" in allow:
        lower = [s for s in IMGSZ_LADDER if s < cand.imgsz]
        if not lower:
            break
        new_est = est.at_imgsz(lower[0])
        new = replace(cand, imgsz=lower[0])
        if "batch" in allow or auto_batch:
            new = replace(new, batch_per_rank=max(1, largest_fitting(new_est, budget, wanted)))
        note("imgsz", cand, new, est, new_est)
        cand, est = new, new_est
    while not fits(cand, est) and "model" in allow and (smaller := smaller_model(cand.model_cfg)):
        new_est = estimate_for(smaller, cand.imgsz, cand.amp)
        new = replace(cand, model_cfg=smaller)
        if "batch" in allow or auto_batch:
            new = replace(new, batch_per_rank=max(1, largest_fitting(new_est, budget, wanted)))
        note("model", cand, new, est, new_est)
        cand, est = new, new_est
    if not fits(cand, est):
        missing = [k for k in DOWNGRADES if k not in allow]
        hint = (f"allow more downgrades (train.allow_downgrade=[{','.join(DOWNGRADES)}], now missing "
                f"{missing}), or " if missing else "")
        tried = "; ".join(steps) if steps else "no downgrade was allowed"
        raise MemoryPlanError(
            f"Out of memory before the first step: {_short(cand)} needs {est.total(cand.batch_per_rank) / GiB:.2f} "
            f"GiB per rank, the budget on {device} is {budget / GiB:.2f} GiB ({free / GiB:.2f} GiB free x "
            f"train.memory_fraction). Tried: {tried}. Fix: {hint}lower train.batch, data.imgsz or model, or free "
            f"the device (another process may hold memory).",
            need=est.total(cand.batch_per_rank), budget=budget,
        )
    return MemoryPlan(cand, est, budget, free, device, tuple(steps))


def _short(c: Candidate) -> str:
    return f"{c.model_cfg.rsplit('.', 1)[0]}@{c.imgsz} amp={c.amp} batch/rank={c.batch_per_rank}"
