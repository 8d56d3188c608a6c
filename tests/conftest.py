from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def mirror() -> Path:
    """The offline dataset mirror: $WAVELET_DATA_MIRROR, or ../shared/datasets beside the repo."""
    path = Path(os.environ.get("WAVELET_DATA_MIRROR") or REPO.parent / "shared" / "datasets")
    if not (path / "mnist" / "train-images-idx3-ubyte.gz").is_file():
        pytest.fail(f"dataset mirror not found at {path}; set WAVELET_DATA_MIRROR")
    return path


@pytest.fixture(scope="session")
def mnist_raw(tmp_path_factory, mirror) -> Path:
    """data/raw written once by the real download stage from the mirror."""
    from pipeline import download

    root = tmp_path_factory.mktemp("raw")
    old = os.environ.get(download.MIRROR_ENV)
    os.environ[download.MIRROR_ENV] = str(mirror)
    try:
        download.run("mnist", root)
    finally:
        if old is None:
            del os.environ[download.MIRROR_ENV]
        else:
            os.environ[download.MIRROR_ENV] = old
    return root


@pytest.fixture(scope="session")
def mnist_train_coeffs(mnist_raw) -> tuple[np.ndarray, np.ndarray]:
    """Haar coefficients of the full MNIST training split, and its labels."""
    from pipeline import dwt, idx

    images, labels = idx.load_split("mnist", "train", mnist_raw)
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
