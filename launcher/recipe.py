"""`train.from_yolo=<args.yaml>` on the command line: the file's `yolo train` recipe becomes overrides placed
before the user's, so the user's win, and anything it asks that yolo-ddp cannot do is refused before Hydra
composes a config or any worker starts (yolo_ddp/config/from_yolo.py sorts the keys)."""

from __future__ import annotations

import os

from launcher.argv import split_argv
from yolo_ddp.config.from_yolo import translate

KEY = "train.from_yolo"


def apply_from_yolo(argv: list[str]) -> list[str]:
    flags, overrides = split_argv(argv[1:])
    given = [o.split("=", 1)[1] for o in overrides if o.split("=", 1)[0].lstrip("+") == KEY]
    if not given or not given[-1]:
        return argv
    if "," in given[-1]:
        raise ValueError(f"Config key '{KEY}': sweep the recipe's keys, not the file ({given[-1]}).")
    recipe = translate(given[-1])
    if refusal := recipe.refusal():
        raise ValueError(refusal)
    mapped = recipe.command_line(overrides)
    if int(os.environ.get("RANK", 0)) == 0:
        print(recipe.describe(), flush=True)
    return [argv[0], *flags, *mapped, *overrides]
