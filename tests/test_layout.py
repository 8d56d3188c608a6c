"""The layout a reader navigates by role: stages (run by dvc.yaml) on top, libraries below them,
so no library module imports a stage, no stage imports another, and no imports go round in a
cycle. Derived from the imports, like dvc.yaml's code deps; and no function grows past 60 lines."""
from __future__ import annotations

import ast

from conftest import REPO

from pipeline import provenance

STAGES = "pipeline.stages"
MAX_FUNCTION_LINES = 60


def import_graph() -> dict[str, set[str]]:
    """Module -> the modules of the package it imports by name (packages' own __init__ excluded)."""
    return {module: set(provenance.imports(module)) - {module} for module in provenance.all_modules()}


def layering_problems(graph: dict[str, set[str]]) -> list[str]:
    problems = []
    for module, imported in sorted(graph.items()):
        for target in sorted(imported):
            if target.startswith(STAGES + ".") and not module.startswith(STAGES + "."):
                problems.append(f"library module {module} imports the stage {target}")
            elif target.startswith(STAGES + ".") and module.startswith(STAGES + "."):
                problems.append(f"stage {module} imports the stage {target}")
    return problems


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Import cycles, each as the path that closes it (depth-first search)."""
    found, state = [], {}

    def visit(module: str, path: list[str]) -> None:
        state[module] = "open"
        for target in sorted(graph.get(module, ())):
            if state.get(target) == "open":
                found.append(path[path.index(target):] + [target])
            elif target not in state:
                visit(target, path + [target])
        state[module] = "done"

    for module in sorted(graph):
        if module not in state:
            visit(module, [module])
    return found


def test_no_library_module_imports_a_stage_and_no_stage_another():
    assert layering_problems(import_graph()) == []


def test_the_layering_check_catches_a_library_importing_a_stage():
    graph = import_graph()
    graph["pipeline.metrics"].add("pipeline.stages.train_classifier")
    graph["pipeline.stages.tune"].add("pipeline.stages.sample")
    assert layering_problems(graph) == [
        "library module pipeline.metrics imports the stage pipeline.stages.train_classifier",
        "stage pipeline.stages.tune imports the stage pipeline.stages.sample"]


def test_imports_have_no_cycles():
    assert cycles(import_graph()) == []


def test_the_cycle_check_catches_one():
    graph = import_graph()
    graph["pipeline.io"].add("pipeline.formats")  # formats imports io
    assert ["pipeline.formats", "pipeline.io", "pipeline.formats"] in cycles(graph) or \
        ["pipeline.io", "pipeline.formats", "pipeline.io"] in cycles(graph)


def long_functions(root=REPO / "pipeline") -> list[str]:
    found = []
    for path in sorted(root.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                lines = node.end_lineno - node.lineno + 1
                if lines > MAX_FUNCTION_LINES:
                    found.append(f"{path.relative_to(REPO)}:{node.lineno} {node.name} has {lines} lines")
    return found


def test_no_function_is_longer_than_60_lines():
    assert long_functions() == []
