"""An OOM injected into `python -m launcher` workers (tests/test_oom_restart.py puts this dir on PYTHONPATH).

YOLO_DDP_TEST_OOM="<forward|backward>:<optimizer step>:<rank>": that rank raises the real torch.OutOfMemoryError
at that step (0-based: the step after `step` completed ones), inside a SyncBatchNorm layer's forward or inside
the final micro-step's backward (from a gradient hook, while DDP's buckets and SyncBatchNorm's backward
all-reduces are in flight), as the CUDA allocator would. Only while the micro-batch is unsplit: the restarted job
runs the step at half the micro-batch, where it "fits", as a real OOM would after halving.
"""

from __future__ import annotations

import importlib.abc
import importlib.util
import os
import sys

TARGET = "yolo_ddp.engine.loop"


def _arm(where: str, state, n_micro: int) -> None:
    import torch

    if where == "forward":
        norms = [m for m in state.raw.modules() if "SyncBatchNorm" in type(m).__name__
                 or type(m).__name__ == "CollectiveBatchNorm2d"]
        assert norms, "the injected forward OOM needs SyncBatchNorm (train.sync_bn=auto: on for 2 CPU ranks x 4)"
        layer = norms[len(norms) // 2]  # mid-forward: peers wait in this layer's all-reduce

        def forward(*args, **kwargs):
            del layer.forward
            raise torch.OutOfMemoryError("CUDA out of memory (injected in a SyncBatchNorm forward by the test)")

        layer.forward = forward
        return
    param = next(p for p in state.raw.parameters() if p.requires_grad)  # the first layer: its gradient comes last
    calls = {"n": 0}

    def hook(grad):
        calls["n"] += 1
        if calls["n"] == n_micro:  # the final micro-step's backward: DDP's gradient all-reduce is under way
            handle.remove()
            raise torch.OutOfMemoryError("CUDA out of memory (injected in the synchronising backward by the test)")
        return grad

    handle = param.register_hook(hook)


def _patch(loop) -> None:
    where, step, rank = os.environ["YOLO_DDP_TEST_OOM"].split(":")
    real = loop.forward_backward

    def forward_backward(s, batches, ctx, guard):
        if guard.splits == 1 and s.step == int(step) and os.environ.get("RANK") == rank:
            _arm(where, s, len(batches))
        return real(s, batches, ctx, guard)

    loop.forward_backward = forward_backward


class _PatchOnImport(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path, target=None):
        if name != TARGET:
            return None
        sys.meta_path.remove(self)
        spec = importlib.util.find_spec(name)
        run = spec.loader.exec_module

        def exec_module(module):
            run(module)
            _patch(module)

        spec.loader.exec_module = exec_module
        return spec


if os.environ.get("YOLO_DDP_TEST_OOM") and "LOCAL_RANK" in os.environ:  # workers only, not the launcher
    sys.meta_path.insert(0, _PatchOnImport())
