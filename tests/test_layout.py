"""The tree shows the stages and nothing imports in a circle: read from the source with `ast`, nothing imported.

Every import counts, module-level or inside a function (a lazy import still ties the two modules together).
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("launcher", "yolo_ddp", "hydra_plugins")

# Stages, lowest first: a module imports only from its own stage or from lower ones.
# config -> plan -> data -> engine -> logging is the path the data takes; logging is the engine's sink, so it
# sits below the engine that writes into it and never imports it.
STAGES = [
    ("yolo_ddp",),  # the root's foundations: config, dist, plan, schedule
    ("yolo_ddp.topology",),
    ("yolo_ddp.sync", "yolo_ddp.memory"),
    ("yolo_ddp.data",),
    ("yolo_ddp.logging",),
    ("yolo_ddp.engine",),
    ("launcher", "hydra_plugins"),
]


def module_files() -> dict[str, Path]:
    mods = {}
    for pkg in PACKAGES:
        for path in sorted((ROOT / pkg).rglob("*.py")):
            parts = path.relative_to(ROOT).with_suffix("").parts
            name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
            mods[name] = path
    return mods


def _target(name: str, mods: dict[str, Path]) -> str | None:
    """The project module `name` is (or lies in): `yolo_ddp.engine.model.build_model` -> `yolo_ddp.engine.model`."""
    while name and name not in mods:
        name = name.rpartition(".")[0]
    return name or None


def imports_of(name: str, path: Path, mods: dict[str, Path]) -> set[str]:
    found: set[str] = set()
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            candidates = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: from the package, `level - 1` levels up
                anchor = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                base = ".".join([*anchor, base] if base else anchor)
            candidates = [f"{base}.{alias.name}" for alias in node.names]  # a submodule, or a name in `base`
        else:
            continue
        found |= {t for c in candidates if (t := _target(c, mods)) and t != name}
    return found


def import_graph() -> dict[str, set[str]]:
    mods = module_files()
    return {name: imports_of(name, path, mods) for name, path in mods.items()}


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle as a path (first == last), or None."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return path[path.index(nxt):] + [nxt]
            if nxt not in state and (cycle := visit(nxt)):
                return cycle
        path.pop()
        state[node] = 2
        return None

    for start in sorted(graph):
        if start not in state and (cycle := visit(start)):
            return cycle
    return None


def stage_of(module: str) -> int:
    best, rank = -1, -1
    for i, prefixes in enumerate(STAGES):
        for p in prefixes:
            if (module == p or module.startswith(p + ".")) and len(p) > best:
                best, rank = len(p), i
    assert rank >= 0, f"{module} belongs to no stage: add it to STAGES"
    return rank


def test_no_import_cycle_among_the_projects_modules() -> None:
    cycle = find_cycle(import_graph())
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


def test_the_cycle_finder_sees_a_circle() -> None:
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set(), "c": {"a", "b"}}) is None


def test_the_walker_sees_lazy_and_relative_imports(tmp_path: Path) -> None:
    mods = {"pkg": tmp_path / "__init__.py", "pkg.a": tmp_path / "a.py", "pkg.b": tmp_path / "b.py",
            "pkg.sub": tmp_path / "sub" / "__init__.py", "pkg.sub.c": tmp_path / "sub" / "c.py"}
    (tmp_path / "sub").mkdir()
    mods["pkg.sub.c"].write_text("def f():\n    from ..b import thing\n    from . import c2\n")
    mods["pkg.a"].write_text("import pkg.sub.c\nfrom pkg import b\n")
    assert imports_of("pkg.sub.c", mods["pkg.sub.c"], mods) == {"pkg.b", "pkg.sub"}
    assert imports_of("pkg.a", mods["pkg.a"], mods) == {"pkg.sub.c", "pkg.b"}


def test_imports_run_down_the_stages_only() -> None:
    upward = sorted(f"{a} -> {b}" for a, targets in import_graph().items() for b in targets
                    if stage_of(b) > stage_of(a))
    assert not upward, "imports from a lower stage up into a higher one:\n" + "\n".join(upward)


def test_the_tree_stays_small() -> None:
    """At most 5 modules at yolo_ddp's root, about 12 per package, none over 350 lines."""
    root = [p.name for p in (ROOT / "yolo_ddp").glob("*.py") if p.name != "__init__.py"]
    assert len(root) <= 5, root
    for pkg in PACKAGES:
        for init in (ROOT / pkg).rglob("__init__.py"):
            modules = [p.name for p in init.parent.glob("*.py") if p.name != "__init__.py"]
            assert len(modules) <= 12, f"{init.parent.relative_to(ROOT)}: {len(modules)} modules"
    long = {str(p.relative_to(ROOT)): n for p in module_files().values()
            if (n := len(p.read_text().splitlines())) > 350}
    assert not long, long


def test_each_package_says_what_it_is_for() -> None:
    for pkg in PACKAGES:
        for init in (ROOT / pkg).rglob("__init__.py"):
            doc = ast.get_docstring(ast.parse(init.read_text()))
            assert doc, f"{init.relative_to(ROOT)} has no docstring saying what the package is for"
