"""Refuse keys the typed schema does not have, however they arrived.

Hydra's struct mode already refuses `train.epoch=5`, but `+train.epoch=5` (and a `+key` in an experiment file)
adds the key in struct mode on purpose, and `OmegaConf.to_object` then drops it: the run would train with the
user's setting silently ignored. This check runs after composition, on the composed config.
"""

from __future__ import annotations

import dataclasses
import difflib
import typing
from typing import Any

from omegaconf import DictConfig, OmegaConf


def unknown_keys(cfg: dict[str, Any], schema: type, prefix: str = "") -> list[tuple[str, str | None]]:
    """(dotted key, closest valid dotted key or None) for every key of `cfg` that `schema` lacks."""
    hints = typing.get_type_hints(schema)
    fields = {f.name: hints[f.name] for f in dataclasses.fields(schema)}
    out: list[tuple[str, str | None]] = []
    for key, value in cfg.items():
        key = str(key)
        if key not in fields:
            close = difflib.get_close_matches(key, list(fields), n=1, cutoff=0.6)
            for rest in _leaves(value):  # +trian.epochs=3 reports trian.epochs -> train.epochs
                out.append((prefix + key + rest, prefix + close[0] + rest if close else None))
        elif dataclasses.is_dataclass(fields[key]) and isinstance(value, dict):
            out += unknown_keys(value, fields[key], f"{prefix}{key}.")
    return out


def refuse_unknown_keys(cfg: DictConfig, schema: type) -> None:
    bad = unknown_keys(OmegaConf.to_container(cfg, resolve=False), schema)  # ${hydra:...} stays unresolved
    if not bad:
        return
    parts = [f"'{key}'" + (f" (did you mean '{close}'?)" if close else "") for key, close in bad]
    fix = bad[0][1]
    raise ValueError(
        f"Unknown config key(s) {', '.join(parts)}: not in the typed schema (yolo_ddp/config/), so the setting "
        f"would be ignored. A '+' prefix adds a key Hydra would otherwise refuse; "
        + (f"write {fix}=... without the '+'." if fix else "remove it, or see `--cfg job` for the valid keys.")
    )


def _leaves(node: Any) -> list[str]:
    """'' for a value, '.a', '.b.c', ... for the leaves of a mapping."""
    if not isinstance(node, dict) or not node:
        return [""]
    return [f".{k}{rest}" for k, v in node.items() for rest in _leaves(v)]
