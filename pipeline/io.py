"""Stage inputs and outputs.

Outputs are atomic: a stage writes into a temporary sibling and renames it into place when done,
so an interrupted or failed run never leaves a half-written output behind (and a failed run
leaves the previous output in place). Inputs are checked where they are read: a file that is
missing, unreadable or not what the previous stage promised raises InputError, one line naming
the file, what is wrong and which stage to rerun.

Where they are: each stage module declares its paths once, as dvc.yaml writes them (`INPUTS`, its
deps other than code; `OUTPUTS`, its outs, metrics and plots; `{dataset}` for `${dataset}`), and
its `run` resolves them with `stage_paths`; tests/test_dvc_yaml.py keeps the two equal.
"""
from __future__ import annotations

import json
import os
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path
from types import SimpleNamespace
from typing import Iterator

import numpy as np

# mkdtemp/mkstemp create private (0700/0600) paths; outputs get the usual permissions.
_UMASK = os.umask(0)
os.umask(_UMASK)


def stage_paths(inputs: dict[str, str], outputs: dict[str, str], overrides: dict[str, str | Path],
                dataset: str | None = None) -> SimpleNamespace:
    """A stage's paths as one Path attribute per name of its `inputs` and `outputs` (declared as
    dvc.yaml writes them, `{dataset}` filled in from `dataset`); `overrides` (by name, as a test
    passes them to `run`) replace the declared paths as given."""
    if set(inputs) & set(outputs):
        raise ValueError(f"paths named both input and output: {', '.join(sorted(set(inputs) & set(outputs)))}")
    declared = {**inputs, **outputs}
    unknown = [name for name in overrides if name not in declared]
    if unknown:
        raise TypeError(f"unknown path {', '.join(unknown)}; this stage's paths are {', '.join(declared)}")
    paths = {}
    for name, template in declared.items():
        if name in overrides:
            paths[name] = Path(overrides[name])
        elif "{dataset}" in template and dataset is None:
            raise TypeError(f"path {name} ({template}) needs the dataset")
        else:
            paths[name] = Path(template.format(dataset=dataset))
    return SimpleNamespace(**paths)


@contextmanager
def atomic_dir(final: str | Path) -> Iterator[Path]:
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.", suffix=".tmp", dir=final.parent))
    tmp.chmod(0o777 & ~_UMASK)
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if final.exists():
        shutil.rmtree(final)
    os.replace(tmp, final)


@contextmanager
def atomic_file(final: str | Path, mode: str = "w") -> Iterator:
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{final.name}.", suffix=".tmp", dir=final.parent)
    os.chmod(tmp, 0o666 & ~_UMASK)
    try:
        with os.fdopen(fd, mode) as handle:
            yield handle
    except BaseException:
        os.unlink(tmp)
        raise
    os.replace(tmp, final)


class InputError(ValueError):
    """A stage's input file is missing, unreadable or breaks the contract of the stage that wrote it."""

    def __init__(self, path: str | Path, problem: str, producer: str | None = None, fix: str | None = None):
        fix = fix or (f"rerun `dvc repro {producer}`" if producer else "fix or remove it")
        super().__init__(f"{path}: {problem}; {fix}")


def load_npy(path: str | Path, producer: str, mmap_mode: str | None = None) -> np.ndarray:
    """An array written by stage `producer` (np.save), or InputError."""
    try:
        return np.load(path, mmap_mode=mmap_mode, allow_pickle=False)
    except FileNotFoundError:
        raise InputError(path, "does not exist", producer) from None
    except (OSError, ValueError, EOFError) as error:
        raise InputError(path, f"is not a readable .npy array ({type(error).__name__}: {error})", producer) from None


def load_labels(path: str | Path, count: int, n_classes: int, producer: str) -> np.ndarray:
    """`count` class labels in 0..n_classes-1 written by stage `producer`, as int16, or InputError."""
    labels = load_npy(path, producer)
    if labels.shape != (count,) or not np.issubdtype(labels.dtype, np.integer):
        raise InputError(path, f"holds {labels.dtype} of shape {labels.shape}, not ({count},) integer labels", producer)
    if count and (labels.min() < 0 or labels.max() >= n_classes):
        raise InputError(path, f"holds labels {labels.min()}..{labels.max()}, not 0..{n_classes - 1}", producer)
    return labels.astype(np.int16)


def read_json(path: str | Path, producer: str) -> dict:
    """A JSON object written by stage `producer`, or InputError."""
    try:
        data = json.loads(Path(path).read_text())
    except FileNotFoundError:
        raise InputError(path, "does not exist", producer) from None
    except (OSError, ValueError) as error:
        raise InputError(path, f"is not valid JSON ({error})", producer) from None
    if not isinstance(data, dict):
        raise InputError(path, f"holds a {type(data).__name__}, not a JSON object", producer)
    return data


def require_keys(data: dict, keys, path: str | Path, producer: str) -> None:
    missing = [key for key in keys if key not in data]
    if missing:
        raise InputError(path, f"lacks {', '.join(missing)}", producer)


def write_json(path: str | Path, obj) -> None:
    with atomic_file(path) as handle:
        json.dump(obj, handle, indent=2, sort_keys=False)
        handle.write("\n")
