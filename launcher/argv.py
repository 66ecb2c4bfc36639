"""Hydra's command line in any order: flags first, then the overrides, as Hydra's argparse parser needs.

Hydra parses `overrides` as one `nargs="*"` positional, so argparse takes overrides on one side of the flags
only: `+experiment=x --cfg job data.imgsz=320` fails with `unrecognized arguments: data.imgsz=320`, and
`--info` (an optional value) swallows the override after it. Hydra overrides never start with '-', so each
token is a flag, a flag's value, or an override; the launcher rewrites `sys.argv` into flags + overrides.
"""

from __future__ import annotations

# Hydra 1.3's flags that take a value (hydra._internal.utils.get_args_parser; tests/test_argv.py checks them
# against the installed parser). The others are switches.
VALUE_FLAGS = frozenset({"--cfg", "-c", "--package", "-p", "--config-path", "-cp", "--config-name", "-cn",
                         "--config-dir", "-cd", "--experimental-rerun"})
INFO_FLAGS = frozenset({"--info", "-i"})  # an optional value from INFO_CHOICES; bare means "all"
INFO_CHOICES = frozenset({"all", "config", "defaults", "defaults-tree", "plugins", "searchpath"})


def split_argv(args: list[str]) -> tuple[list[str], list[str]]:
    """(flags with their values, overrides), each in the order given."""
    flags: list[str] = []
    overrides: list[str] = []
    i = 0
    while i < len(args):
        a = args[i]
        if not a.startswith("-"):
            overrides.append(a)
        elif a in VALUE_FLAGS and i + 1 < len(args):
            flags += [a, args[i + 1]]
            i += 1
        elif a in INFO_FLAGS:
            if i + 1 < len(args) and args[i + 1] in INFO_CHOICES:
                flags.append(f"--info={args[i + 1]}")
                i += 1
            else:
                flags.append("--info=all")  # what a bare --info means; explicit, so no override is taken as its value
        else:
            flags.append(a)
        i += 1
    return flags, overrides


def normalize_argv(argv: list[str], extra_overrides: list[str] = ()) -> list[str]:
    """argv[0], the flags, the overrides, then `extra_overrides` (a default the launcher adds)."""
    flags, overrides = split_argv(argv[1:])
    return [argv[0], *flags, *overrides, *extra_overrides]
