"""Scripted validation fitness for `python -m launcher` workers (tests/test_yolo_args.py puts this dir on PYTHONPATH).

YOLO_DDP_TEST_FITNESS="0.1,0.3,0.2,...": epoch N's evaluation reports the Nth value as its mAP50-95 and fitness
(after really evaluating), so early stopping meets a known sequence instead of a tiny run's all-zero mAP.
"""

from __future__ import annotations

import dataclasses
import os

if os.environ.get("YOLO_DDP_TEST_FITNESS"):
    from yolo_ddp.engine import evaluate as _evaluate_module

    _real = _evaluate_module.evaluate
    _sequence = [float(x) for x in os.environ["YOLO_DDP_TEST_FITNESS"].split(",")]
    _calls = [0]

    def _scripted(*args, **kwargs):
        result = _real(*args, **kwargs)
        value = _sequence[min(_calls[0], len(_sequence) - 1)]
        _calls[0] += 1
        return dataclasses.replace(result, map50_95=value, fitness=value) if result is not None else None

    _evaluate_module.evaluate = _scripted
