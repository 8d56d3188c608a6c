from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml

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


def plain_params() -> dict:
    """The repository's params.yaml in the contract's plain language (no merges): the base of the
    unit tests, which test the plain language and the stages over it. The default's merges run end
    to end in the dvc tests (small_repo) and are tested id by id in test_bpe."""
    raw = yaml.safe_load((REPO / "params.yaml").read_text())
    raw["tokenizer"]["bpe_vocab_size"] = 0
    return raw


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
    raw = plain_params()
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


# ----- the real `dvc` on a tiny configuration (test_dvc_pipeline, test_dvc_families) -----

def dvc(repo: Path, *args: str, mirror: Path, ok: bool = True) -> str:
    env = dict(os.environ, WAVELET_DATA_MIRROR=str(mirror),
               PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}")
    result = subprocess.run([sys.executable, "-m", "dvc", *args], cwd=repo, env=env,
                            capture_output=True, text=True)
    if ok:
        assert result.returncode == 0, f"dvc {' '.join(args)} failed:\n{result.stdout}\n{result.stderr}"
    else:
        assert result.returncode != 0, f"dvc {' '.join(args)} should have failed:\n{result.stdout}"
    return result.stdout + result.stderr


TINY = {
    "dwt": {"limit": 200},
    "sample": {"classes": [0, 1], "per_class": 5, "batch_size": 10, "diffusion_steps": 4},
    "tune": {"cfg_scales": [1.0, 2.0], "top_ps": [1.0], "diffusion_steps": [2, 4], "per_class": 3,
             "reference_per_class": 5},
    "complete": {"prefix_planes": [1, 2], "images": 4, "completions": 2},
    "train_classifier": {"epochs": 1, "limit": 2000},
    "eval": {"num_samples": 10, "reference_images": 10, "kid_subset_size": 5, "batch_size": 10},
    "model": {"n_layer": 1, "n_embd": 32, "n_head": 2, "unet_channels": [8, 16]},
    "train": {"steps": 4, "batch_size": 4, "log_every": 2, "eval_every": 2, "eval_batches": 1,
              "final_eval_images": 8, "checkpoint_every": 2},
}
# The whole chain's first run scores with Inception; the other experiments leave its figures
# null (`eval.inception`): on a CPU, the Inception passes and FIDs were a third of their time.
NO_INCEPTION = ("-S", "eval.inception=false")


@pytest.fixture(scope="module")
def small_repo(tmp_path_factory) -> Path:
    """A copy of the repository whose conf/ (and so params.yaml) is the tiny configuration."""
    from dvc.utils.hydra import compose_and_dump

    repo = repo_copy(tmp_path_factory.mktemp("repo"))
    conf = yaml.safe_load((repo / "conf/config.yaml").read_text())
    for group, values in TINY.items():
        conf[group].update(values)
    (repo / "conf/config.yaml").write_text(yaml.safe_dump(conf, sort_keys=False))
    compose_and_dump(repo / "params.yaml", str(repo / "conf"), None, "config", str(repo), [])
    subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qam", "small"],
                   cwd=repo, check=True)
    return repo


def baseline(repo: Path) -> None:
    """`dvc exp run` leaves its composed params.yaml in the workspace: go back to the committed one."""
    subprocess.run(["git", "checkout", "--", "params.yaml"], cwd=repo, check=True)


STAGES = ("download", "dwt", "tokenize", "train", "sample", "train_classifier", "tune", "complete", "evaluate")


def ran(out: str) -> set[str]:
    return {stage for stage in STAGES if f"Running stage '{stage}'" in out}
