"""The names metrics have in W&B, in one place: the writer logs under them and the dashboard plots them.

steps.csv / metrics.csv columns map to W&B keys with a prefix: per step `train/` (losses, lr, amp_scale, epoch),
`perf/` (img/s, data wait, step time) and `mem/` (peak memory, the planner's need); `perf/rank{r}/...` and
`mem/rank{r}/...` per rank; per epoch `val/` (mAP) and `epoch/` (the rest of the metrics.csv row).
"""

from __future__ import annotations

PER_RANK = ("img_per_s", "data_wait_ms", "step_ms", "peak_mem_gib")
PLAN_NEED = "plan_need_gib"  # the memory planner's need per rank (memory_plan.json need_GiB), a steps.csv column
MEMORY = ("peak_mem_gib", PLAN_NEED)

# Run summary keys, written when the run ends (RunWriter._summarise).
BEST_MAP = "best/mAP50-95"
BEST_IMG_PER_S = "best/img_per_s"
PEAK_MEM = "peak_mem_gib"
PER_CLASS_AP = "val/per_class_ap"  # a W&B Table: class, AP50-95
PREDICTIONS = "val/predictions"


def step_key(column: str) -> str:
    """The W&B key of a steps.csv column."""
    if column.startswith("rank"):
        rank, name = column.split("_", 1)
        return f"{'mem' if name in MEMORY else 'perf'}/{rank}/{name}"
    if column in PER_RANK or column == PLAN_NEED:
        return f"{'mem' if column in MEMORY else 'perf'}/{column}"
    return f"train/{column}"


def epoch_key(column: str) -> str:
    """The W&B key of a metrics.csv column."""
    if column == "epoch":
        return "epoch"
    return f"val/{column}" if column.startswith("mAP") else f"epoch/{column}"


def rank_key_regex(column: str) -> str:
    """A regex matching `column`'s per-rank keys for any world size (`perf/rank\\d+/img_per_s`)."""
    return step_key(f"rank0_{column}").replace("rank0", r"rank\d+")
