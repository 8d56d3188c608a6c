"""What a stage runs and reads, as content digests: the code files it executes (found from the
imports of its module, so the list cannot drift from the code) and the data it reads.

dvc.yaml lists the same code files as each stage's deps (a test derives them from here), and the
train stage puts both digests into its checkpoint fingerprint, so a checkpoint is resumed only by
the same code on the same data.
"""
from __future__ import annotations

import ast
import hashlib
from functools import lru_cache
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent
# Every stage runs through these: `python -m pipeline <stage>` (the CLI validates the params).
ENTRY = ("__init__", "__main__", "cli", "params")


def _imported_modules(path: Path) -> set[str]:
    """Modules of this package that a file imports, at module level or inside functions."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.ImportFrom):
            if node.level == 1 and node.module is None:  # from . import a, b
                found.update(alias.name for alias in node.names)
            elif node.level == 1:  # from .a import b
                found.add(node.module.split(".")[0])
            elif node.level == 0 and node.module and node.module.split(".")[0] == PACKAGE.name:
                parts = node.module.split(".")
                found.update([parts[1]] if len(parts) > 1 else [alias.name for alias in node.names])
        elif isinstance(node, ast.Import):
            for alias in node.names:
                parts = alias.name.split(".")
                if parts[0] == PACKAGE.name and len(parts) > 1:
                    found.add(parts[1])
    return {name for name in found if (PACKAGE / f"{name}.py").is_file()}


@lru_cache(maxsize=None)
def module_closure(module: str) -> frozenset[str]:
    """The module and every module of this package it imports, transitively."""
    seen, todo = set(), [module]
    while todo:
        name = todo.pop()
        if name not in seen:
            seen.add(name)
            todo.extend(_imported_modules(PACKAGE / f"{name}.py") - seen)
    return frozenset(seen)


def stage_files(stage_module: str) -> list[str]:
    """Repository paths of the code a stage executes: the entry point's closure (the CLI reaches
    the stage module by name) and the stage module's."""
    names = set(module_closure(stage_module))
    for entry in ENTRY:
        names |= module_closure(entry)
    return sorted(f"{PACKAGE.name}/{name}.py" for name in names)


def digest_files(paths, root: str | Path = PACKAGE.parent) -> str:
    """SHA-256 over the named files' paths and contents."""
    h = hashlib.sha256()
    for name in sorted(str(p) for p in paths):
        h.update(name.encode() + b"\0" + (Path(root) / name).read_bytes() + b"\0")
    return h.hexdigest()


def digest_tree(folder: str | Path) -> str:
    """SHA-256 over every file below a folder (relative paths and contents)."""
    folder = Path(folder)
    return digest_files((p.relative_to(folder) for p in folder.rglob("*") if p.is_file()), folder)


def code_digest(stage_module: str) -> str:
    return digest_files(stage_files(stage_module))
