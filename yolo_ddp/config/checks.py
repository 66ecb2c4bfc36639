"""The one check every config dataclass runs: a ValueError naming the key and the fix."""

from __future__ import annotations


def check(ok: bool, key: str, message: str) -> None:
    if not ok:
        raise ValueError(f"Config key '{key}': {message}")
