from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]

if os.environ.get("PYTEST_XDIST_WORKER"):  # the workers share the cores: one torch thread each
    import torch

    torch.set_num_threads(1)


def pytest_collection_modifyitems(items):
    """Slow files first, so the longest one (the dvc chain) does not start last on its worker."""
    items.sort(key=lambda item: item.get_closest_marker("slow") is None)


@pytest.fixture(scope="session")
def mirror() -> Path:
    """The offline dataset mirror: $WAVELET_DATA_MIRROR, or ../shared/datasets beside the repo."""
    path = Path(os.environ.get("WAVELET_DATA_MIRROR") or REPO.parent / "shared" / "datasets")
    if not (path / "mnist" / "train-images-idx3-ubyte.gz").is_file():
        pytest.fail(f"dataset mirror not found at {path}; set WAVELET_DATA_MIRROR")
    return path


@pytest.fixture(scope="session")
def mnist_raw(tmp_path_factory, mirror) -> Path:
    """data/raw/mnist written once by the real download stage from the mirror."""
    from pipeline.stages import download

    folder = tmp_path_factory.mktemp("raw") / "mnist"
    old = os.environ.get(download.MIRROR_ENV)
    os.environ[download.MIRROR_ENV] = str(mirror)
    try:
        download.run("mnist", raw=folder)
    finally:
        if old is None:
            del os.environ[download.MIRROR_ENV]
        else:
            os.environ[download.MIRROR_ENV] = old
    return folder


@pytest.fixture(scope="session")
def mnist_train_coeffs(mnist_raw) -> tuple[np.ndarray, np.ndarray]:
    """Haar coefficients of the full MNIST training split, and its labels."""
    from pipeline import idx
    from pipeline.stages import dwt

    images, labels = idx.load_split(mnist_raw, "train")
    coeffs, _ = dwt.transform(images, "haar")
    return coeffs, labels


def repo_copy(dest: Path) -> Path:
    """A copy of the repository's tracked and untracked-but-not-ignored files, as its own git repo."""
    files = subprocess.run(
        ["git", "ls-files", "--cached", "--others", "--exclude-standard", "-z"],
        cwd=REPO, check=True, capture_output=True,
    ).stdout.decode().split("\0")
    for name in filter(None, files):
        src = REPO / name
        if src.is_file():
            (dest / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dest / name)
    for path in ("dvc.lock",):
        (dest / path).unlink(missing_ok=True)
    subprocess.run(["git", "init", "-q"], cwd=dest, check=True)
    subprocess.run(["git", "add", "-A"], cwd=dest, check=True)
    subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "copy"],
                   cwd=dest, check=True)
    return dest


@pytest.fixture(scope="session")
def tokens(mnist_raw, tmp_path_factory) -> Path:
    """data/tokens of the first 300 MNIST images per split, f = -1 (a test image then has an e0
    that no training image has, which once crashed the final test NLL)."""
    import yaml

    from pipeline import params
    from pipeline.stages import dwt
    from pipeline.stages import tokenize as tokenize_stage

    root = tmp_path_factory.mktemp("tokens")
    dwt.run("mnist", "haar", 300, raw=mnist_raw, dwt=root / "dwt", metrics=root / "dwt.json")
    raw = yaml.safe_load((REPO / "params.yaml").read_text())
    raw["tokenizer"]["final_exponent"] = -1  # ~430 tokens per image keeps CPU steps quick
    (root / "params.yaml").write_text(yaml.safe_dump(raw))
    p = params.load(root / "params.yaml", tokenize_stage.PARAMS)
    tokenize_stage.run(p, dwt=root / "dwt", tokens=root / "data" / "tokens", metrics=root / "t.json",
                       length_histogram=root / "fig" / "lengths.png", progressive=root / "fig" / "progressive.png")
    return root / "data" / "tokens"


def run_stage(cwd: Path, *args: str, prefix=(), wait=True, pythonpath: Path = REPO, timeout: float = 600,
              env: dict | None = None):
    """`python -m pipeline <args>` in cwd on the CPU: (exit code, stdout + stderr), or the process."""
    env = {**os.environ, "PYTHONPATH": str(pythonpath), "WAVELET_DEVICE": "cpu", "OMP_NUM_THREADS": "1", **(env or {})}
    command = [*prefix, *(["-m", "pipeline"] if prefix else [sys.executable, "-m", "pipeline"]), *args]
    process = subprocess.Popen(command, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    if not wait:
        return process
    out, _ = process.communicate(timeout=timeout)
    return process.returncode, out
