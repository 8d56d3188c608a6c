"""dvc.yaml says what each stage runs, reads and writes: its code deps are exactly the files the
stage executes (derived from the imports of its module), its params exactly the keys its module
declares (the only ones it can read), and its other deps and its outs, metrics and plots exactly
the paths its module declares (INPUTS and OUTPUTS, the defaults of its `run`)."""
from __future__ import annotations

import copy
import importlib
from pathlib import Path

import pytest
import yaml
from conftest import REPO

from pipeline import provenance
from pipeline.io import stage_paths

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
        declared = set(importlib.import_module(provenance.stage_module(module)).PARAMS)
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


def _paths(entries) -> list[str]:
    """The paths of dvc.yaml entries (a path, or {path: options}), `${dataset}` written `{dataset}`."""
    return [(next(iter(entry)) if isinstance(entry, dict) else entry).replace("${", "{") for entry in entries]


def path_problems(dvc_yaml: dict) -> list[str]:
    """Every way dvc.yaml and the stages' declared paths disagree: a stage's INPUTS against its
    deps that are not code, its OUTPUTS against its outs, metrics and plots."""
    problems = []
    for stage, spec in dvc_yaml["stages"].items():
        module = importlib.import_module(provenance.stage_module(spec["cmd"].split()[-1]))
        if not (hasattr(module, "INPUTS") and hasattr(module, "OUTPUTS")):
            problems.append(f"{stage}: declares no INPUTS and OUTPUTS")
            continue
        listed = {"input": {path for path in _paths(spec.get("deps", [])) if not path.startswith("pipeline/")},
                  "output": set(_paths([*spec.get("outs", []), *spec.get("metrics", []), *spec.get("plots", [])]))}
        declared = {"input": set(module.INPUTS.values()), "output": set(module.OUTPUTS.values())}
        for kind in ("input", "output"):
            problems += [f"{stage}: declares the {kind} {path}, not in dvc.yaml"
                         for path in sorted(declared[kind] - listed[kind])]
            problems += [f"{stage}: dvc.yaml lists the {kind} {path}, which it does not declare"
                         for path in sorted(listed[kind] - declared[kind])]
    return problems


def test_every_stage_declares_the_paths_dvc_yaml_lists():
    assert path_problems(DVC_YAML) == []


def test_the_path_check_catches_a_changed_path():
    broken = copy.deepcopy(DVC_YAML)
    broken["stages"]["train"]["metrics"] = [{"reports/train.json": {"cache": False}}]
    deps = broken["stages"]["evaluate"]["deps"]
    deps[deps.index("data/tokens/meta.json")] = "data/tokens"
    new = [problem for problem in path_problems(broken) if problem not in path_problems(DVC_YAML)]
    assert new == ["train: declares the output reports/train/metrics.json, not in dvc.yaml",
                   "train: dvc.yaml lists the output reports/train.json, which it does not declare",
                   "evaluate: declares the input data/tokens/meta.json, not in dvc.yaml",
                   "evaluate: dvc.yaml lists the input data/tokens, which it does not declare"]


def test_stage_paths_fill_in_the_dataset_and_take_overrides_by_name(tmp_path):
    from pipeline.stages import dwt

    paths = stage_paths(dwt.INPUTS, dwt.OUTPUTS, {"metrics": tmp_path / "dwt.json"}, dataset="mnist")
    assert (paths.raw, paths.dwt, paths.metrics) == (Path("data/raw/mnist"), Path("data/dwt"), tmp_path / "dwt.json")
    with pytest.raises(TypeError, match="unknown path raw_root; this stage's paths are raw, dwt, metrics"):
        dwt.run("mnist", "haar", 10, raw_root=tmp_path)
    with pytest.raises(TypeError, match="needs the dataset"):
        stage_paths(dwt.INPUTS, dwt.OUTPUTS, {})


def test_imports_inside_functions_and_package_inits_count():
    # evaluate reaches the classifier's module; the sampler loads the diffusion family lazily;
    # importing a module of a package runs the package's __init__.py.
    assert "pipeline/models/classifier.py" in provenance.stage_files("evaluate")
    assert "pipeline/models/diffusion/sampler.py" in provenance.stage_files("sample")
    assert "pipeline/models/__init__.py" in provenance.stage_files("evaluate")
    assert "pipeline/stages/train.py" not in provenance.stage_files("evaluate")
    assert "pipeline/generation.py" not in provenance.stage_files("train")  # sampling code does not retrain


def test_every_stage_of_the_cli_is_in_dvc_yaml():
    from pipeline.cli import STAGES

    assert set(STAGES) == set(DVC_YAML["stages"])
