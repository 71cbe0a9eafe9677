"""Which project files a module executes: its import closure within coughlab.

One answer serves two consumers that must agree with the code: the checkpoint fingerprint
(training code that changed invalidates a checkpoint) and the test that holds each stage's
deps in dvc.yaml to what the stage imports. Lazy imports inside functions count too: they run.
"""
from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = "coughlab"
SRC = Path(__file__).resolve().parent.parent


def module_file(name: str, src: Path = SRC) -> Path | None:
    """The file of module `name` (a .py or a package's __init__.py), or None if `name` is an
    attribute (`coughlab.LABELS`) or not in the project."""
    base = src.joinpath(*name.split("."))
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


def imported_modules(path: Path) -> set[str]:
    """Every `coughlab...` module name `path` imports, at any depth of its code."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
            names.update(f"{node.module}.{alias.name}" for alias in node.names)
    return {n for n in names if n == PACKAGE or n.startswith(PACKAGE + ".")}


def parents(name: str) -> list[str]:
    """The packages Python imports before `name`: coughlab.a.b -> coughlab, coughlab.a."""
    parts = name.split(".")
    return [".".join(parts[:i]) for i in range(1, len(parts))]


def module_closure(module: str, src: Path = SRC) -> list[Path]:
    """The project files importing `module` executes, sorted, relative to `src`."""
    seen: set[Path] = set()
    todo = [module]
    while todo:
        name = todo.pop()
        path = module_file(name, src)
        if path is None or path in seen:
            continue
        seen.add(path)
        todo += parents(name) + sorted(imported_modules(path))
    return sorted(p.relative_to(src) for p in seen)
