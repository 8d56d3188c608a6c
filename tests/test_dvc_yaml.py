"""dvc.yaml says what each stage runs and reads: its code deps are exactly the files the stage
executes (derived from the imports of its module), and its params exactly the keys its module
declares (the only ones it can read)."""
from __future__ import annotations

import copy
import importlib

import yaml
from conftest import REPO

from pipeline import provenance

DVC_YAML = yaml.safe_load((REPO / "dvc.yaml").read_text())


def dependency_problems(dvc_yaml: dict) -> list[str]:
    """Every way dvc.yaml disagrees with the code: missing or extra code deps and params."""
    problems = []
    for stage, spec in dvc_yaml["stages"].items():
        module = spec["cmd"].split()[-1]
        listed = {dep for dep in spec.get("deps", []) if dep.startswith("pipeline/")}
        runs = set(provenance.stage_files(module))
        problems += [f"{stage}: runs {path}, not in its deps" for path in sorted(runs - listed)]
        problems += [f"{stage}: lists {path}, which it does not run" for path in sorted(listed - runs)]
        declared = set(importlib.import_module(f"pipeline.{module}").PARAMS)
        params = set(spec.get("params", []))
        problems += [f"{stage}: reads param {key}, not in its params" for key in sorted(declared - params)]
        problems += [f"{stage}: lists param {key}, which it does not read" for key in sorted(params - declared)]
    return problems


def test_every_stage_lists_the_code_it_runs_and_the_params_it_reads():
    assert dependency_problems(DVC_YAML) == []


def test_the_check_catches_a_file_removed_from_dvc_yaml():
    broken = copy.deepcopy(DVC_YAML)
    broken["stages"]["sample"]["deps"].remove("pipeline/wavelets.py")
    broken["stages"]["evaluate"]["params"].remove("profile")
    assert dependency_problems(broken) == ["sample: runs pipeline/wavelets.py, not in its deps",
                                           "evaluate: reads param profile, not in its params"]


def test_imports_inside_functions_count():
    # evaluate reaches the classifier module; sample renders images through the wavelets module.
    assert "pipeline/train_classifier.py" in provenance.stage_files("evaluate")
    assert "pipeline/wavelets.py" in provenance.stage_files("sample")
    assert "pipeline/train.py" not in provenance.stage_files("evaluate")


def test_every_stage_of_the_cli_is_in_dvc_yaml():
    from pipeline.cli import STAGES

    assert set(STAGES) == set(DVC_YAML["stages"])
