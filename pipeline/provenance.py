"""What a stage runs and reads, as content digests: the code files it executes (found from the
imports of its module, so the list cannot drift from the code) and the data it reads.

dvc.yaml lists the same code files as each stage's deps (a test derives them from here), and the
train stage puts both digests into its checkpoint fingerprint, so a checkpoint is resumed only by
the same code on the same data. The same import graph keeps the layout honest: a test checks that
no library module imports a stage and that no imports go round in a cycle.
"""
from __future__ import annotations

import ast
import hashlib
from functools import lru_cache
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent
ROOT = PACKAGE.parent
# Every stage runs through these: `python -m pipeline <stage>` (the CLI validates the params and
# reaches the stage module by name).
ENTRY = (f"{PACKAGE.name}.__main__",)


def module_file(module: str) -> Path | None:
    """The file of a dotted module name of this package (a package's __init__.py), or None."""
    path = ROOT.joinpath(*module.split("."))
    for candidate in (path.with_suffix(".py"), path / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


def all_modules() -> list[str]:
    """Every module of this package, as dotted names."""
    names = []
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = path.relative_to(ROOT).with_suffix("").parts
        names.append(".".join(parts[:-1] if parts[-1] == "__init__" else parts))
    return names


def _target(importer: str, level: int, module: str | None) -> str:
    """The absolute name a (possibly relative) `from ... import` refers to."""
    if level == 0:
        return module or ""
    is_package = module_file(importer).name == "__init__.py"
    base = importer.split(".")
    base = base[:len(base) - (level - 1 if is_package else level)]
    return ".".join(base + ([module] if module else []))


@lru_cache(maxsize=None)
def imports(module: str) -> frozenset[str]:
    """Modules of this package that a module imports by name, at module level or inside functions
    (`from pkg import name` counts `pkg.name` when that is a module, else `pkg`)."""
    path = module_file(module)
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.ImportFrom):
            target = _target(module, node.level, node.module)
            for alias in node.names:
                child = f"{target}.{alias.name}"
                found.add(child if module_file(child) else target)
        elif isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
    return frozenset(name for name in found if name.split(".")[0] == PACKAGE.name and module_file(name))


def _with_packages(module: str) -> set[str]:
    """A module and the packages above it, whose __init__.py run when it is imported."""
    parts = module.split(".")
    return {".".join(parts[:i]) for i in range(1, len(parts) + 1)}


@lru_cache(maxsize=None)
def module_closure(module: str) -> frozenset[str]:
    """The module and every module of this package that importing it executes."""
    seen, todo = set(), [module]
    while todo:
        name = todo.pop()
        for executed in _with_packages(name) - seen:
            seen.add(executed)
            todo.extend(imports(executed))
    return frozenset(seen)


def stage_module(stage: str) -> str:
    return f"{PACKAGE.name}.stages.{stage}"


def stage_files(stage: str) -> list[str]:
    """Repository paths of the code a stage executes: the entry point's closure and the stage
    module's."""
    names = set(module_closure(stage_module(stage)))
    for entry in ENTRY:
        names |= module_closure(entry)
    return sorted(str(module_file(name).relative_to(ROOT)) for name in names)


def digest_files(paths, root: str | Path = ROOT) -> str:
    """SHA-256 over the named files' paths and contents."""
    h = hashlib.sha256()
    for name in sorted(str(p) for p in paths):
        h.update(name.encode() + b"\0" + (Path(root) / name).read_bytes() + b"\0")
    return h.hexdigest()


def digest_tree(folder: str | Path) -> str:
    """SHA-256 over every file below a folder (relative paths and contents)."""
    folder = Path(folder)
    return digest_files((p.relative_to(folder) for p in folder.rglob("*") if p.is_file()), folder)


def code_digest(stage: str) -> str:
    return digest_files(stage_files(stage))
