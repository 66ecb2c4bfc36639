"""Read an offline W&B run back from its `run-<id>.wandb` file, for tests.

wandb 0.31 keeps no summary json for offline runs: the only local record of what was logged is this file,
a LevelDB-style log (7-byte ':W&B' header, 32 KiB blocks of chunks `crc32 u32 | length u16 | type u8 | data`,
type 1 full / 2 first / 3 middle / 4 last) whose records are `wandb_internal_pb2.Record` protobufs.
"""

from __future__ import annotations

import json
import struct
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from wandb.proto import wandb_internal_pb2 as pb

BLOCK = 32 * 1024
CHUNK_HEADER = 7
FULL, FIRST, MIDDLE, LAST = 1, 2, 3, 4


def records(path: Path) -> list[pb.Record]:
    data = path.read_bytes()
    ident, magic, version = struct.unpack("<4sHB", data[:7])
    assert (ident, magic, version) == (b":W&B", 0xBEE1, 0), f"{path} is not a W&B run log"
    out, pending, pos = [], b"", 7
    while pos + CHUNK_HEADER <= len(data):
        left = BLOCK - pos % BLOCK
        if left < CHUNK_HEADER:  # a block's tail too short for a chunk header is padding
            pos += left
            continue
        _crc, length, kind = struct.unpack("<IHB", data[pos:pos + CHUNK_HEADER])
        if kind == 0:  # zero padding up to the block end
            pos += left
            continue
        chunk = data[pos + CHUNK_HEADER:pos + CHUNK_HEADER + length]
        pos += CHUNK_HEADER + length
        pending = chunk if kind in (FULL, FIRST) else pending + chunk
        if kind in (FULL, LAST):
            record = pb.Record()
            record.ParseFromString(pending)
            out.append(record)
    return out


def _key(item: Any) -> str:
    return item.key or "/".join(item.nested_key)


@dataclass
class OfflineRun:
    run_id: str = ""
    name: str = ""
    group: str = ""
    config: dict[str, Any] = field(default_factory=dict)
    history: list[dict[str, Any]] = field(default_factory=list)  # one dict per logged step
    summary: dict[str, Any] = field(default_factory=dict)

    def keys(self) -> set[str]:
        return {k for row in self.history for k in row}

    def series(self, key: str) -> list[Any]:
        return [row[key] for row in self.history if key in row]


def read_run(path: Path) -> OfflineRun:
    run = OfflineRun()
    for record in records(path):
        kind = record.WhichOneof("record_type")
        if kind == "run":
            run.run_id, run.name, run.group = record.run.run_id, record.run.display_name, record.run.run_group
            run.config.update({_key(u): json.loads(u.value_json) for u in record.run.config.update})
        elif kind == "config":
            run.config.update({_key(u): json.loads(u.value_json) for u in record.config.update})
        elif kind == "history":
            run.history.append({_key(i): json.loads(i.value_json) for i in record.history.item})
        elif kind == "summary":
            run.summary.update({_key(u): json.loads(u.value_json) for u in record.summary.update})
    return run


def offline_runs(run_dir: Path, timeout_s: float = 20.0) -> list[Path]:
    """The run logs under `run_dir`, once each is complete: wandb's service may still be flushing a file
    when `finish()` returns in-process, and a log is whole when its `exit` record is in."""
    deadline = time.monotonic() + timeout_s
    while True:
        paths = sorted(run_dir.glob("wandb/offline-run-*/run-*.wandb"))
        if all(_complete(p) for p in paths) or time.monotonic() > deadline:
            return paths
        time.sleep(0.1)


def _complete(path: Path) -> bool:
    try:
        return any(r.WhichOneof("record_type") == "exit" for r in records(path))
    except (AssertionError, struct.error, OSError):  # header not written yet
        return False
