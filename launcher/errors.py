"""User mistakes end with one paragraph and exit code 2, not a traceback from every rank."""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import TypeVar

# Raised for bad input the user can fix: config values, data.yaml/labels (DataError), checkpoints
# (CheckpointError), missing files. Library code raises these with a message naming the key or file.
USER_ERRORS = (ValueError, FileNotFoundError)
EXIT_USER_ERROR = 2

T = TypeVar("T")


def exit_on_user_error(fn: Callable[[], T], rank: int = 0) -> T:
    try:
        return fn()
    except USER_ERRORS as e:
        prefix = "error: " if rank == 0 else f"[rank{rank}] error: "
        sys.stderr.write(f"{prefix}{e}\n")
        sys.stderr.flush()
        raise SystemExit(EXIT_USER_ERROR) from None
