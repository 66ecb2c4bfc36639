"""User mistakes end with one paragraph and exit code 2, not a traceback from every rank."""

from __future__ import annotations

import json
import os
import sys
import time
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
        write_elastic_error_file(str(e))
        raise SystemExit(EXIT_USER_ERROR) from None


def write_elastic_error_file(message: str) -> None:
    """Under an elastic agent (torchrun), record `message` where the agent reads a worker's root cause.

    The record is the one `ErrorHandler.record_exception` writes (torch.distributed.elastic.multiprocessing.errors)
    without `py_callstack`, so the agent's failure summary shows the message instead of `error_file: <N/A>` and
    "To enable traceback see ...". A user error has no useful traceback.
    """
    path = os.environ.get("TORCHELASTIC_ERROR_FILE")
    if not path:
        return
    record = {"message": {"message": message, "extraInfo": {"timestamp": str(int(time.time()))}}}
    try:
        with open(path, "w", encoding="utf-8") as f:
            json.dump(record, f)
    except OSError as e:  # the message is on stderr already; a missing summary must not hide it
        sys.stderr.write(f"(could not write torchrun's error file {path}: {e})\n")
