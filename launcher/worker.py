"""A worker of the self-spawning launcher: read the resolved config the parent wrote, train."""

from __future__ import annotations

import json
import sys
from pathlib import Path

from omegaconf import OmegaConf

from launcher.errors import exit_on_user_error
from yolo_ddp import dist
from yolo_ddp.config import Config


def load_resolved_config(path: Path) -> Config:
    return OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(Config), OmegaConf.load(path)))


def main(argv: list[str]) -> None:
    from yolo_ddp.engine.train import train

    cfg = load_resolved_config(Path(argv[0]))
    result = exit_on_user_error(lambda: train(cfg), rank=dist.get_rank())
    if dist.get_rank() == 0:
        (Path(cfg.run_dir) / "result.json").write_text(json.dumps(result, indent=2, default=str))


if __name__ == "__main__":
    main(sys.argv[1:])
