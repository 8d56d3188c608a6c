"""The real `dvc repro` / `dvc exp run` on a temporary copy of the repository (small subset)."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from conftest import repo_copy

pytestmark = pytest.mark.slow


def dvc(repo: Path, *args: str, mirror: Path) -> str:
    env = dict(os.environ, WAVELET_DATA_MIRROR=str(mirror),
               PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}")
    result = subprocess.run([sys.executable, "-m", "dvc", *args], cwd=repo, env=env,
                            capture_output=True, text=True)
    assert result.returncode == 0, f"dvc {' '.join(args)} failed:\n{result.stdout}\n{result.stderr}"
    return result.stdout + result.stderr


@pytest.fixture(scope="module")
def small_repo(tmp_path_factory) -> Path:
    repo = repo_copy(tmp_path_factory.mktemp("repo"))
    raw = yaml.safe_load((repo / "params.yaml").read_text())
    raw["dwt"]["limit"] = 200
    raw["tokenizer"]["final_exponent"] = -1
    raw["sample"].update(classes=[0, 1], per_class=5, batch_size=10)
    raw["train_classifier"]["epochs"] = 1
    raw["eval"].update(num_samples=10, reference_images=10, kid_subset_size=5, batch_size=10)
    raw["model"].update(n_layer=1, n_embd=32, n_head=2)
    raw["train"].update(steps=4, batch_size=4, log_every=2, eval_every=2, eval_batches=1,
                        final_eval_images=8, checkpoint_every=2)
    (repo / "params.yaml").write_text(yaml.safe_dump(raw, sort_keys=False))
    subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qam", "small"],
                   cwd=repo, check=True)
    return repo


def test_repro_download_dwt_then_noop(small_repo, mirror):
    dvc(small_repo, "repro", "dwt", mirror=mirror)
    assert (small_repo / "data/raw/mnist/train_images.npy").is_file()
    metrics = json.loads((small_repo / "reports/dwt.json").read_text())
    assert metrics["train"]["images"] == 200 and metrics["train"]["max_reconstruction_error"] < 1e-9
    again = dvc(small_repo, "repro", "dwt", mirror=mirror)
    assert "didn't change" in again or "up to date" in again
    assert "Running stage" not in again


def test_exp_run_overrides(small_repo, mirror):
    dvc(small_repo, "repro", "dwt", mirror=mirror)
    out = dvc(small_repo, "exp", "run", "-S", "dataset=fashion_mnist", "dwt", mirror=mirror)
    assert "Running stage 'download'" in out
    out = dvc(small_repo, "exp", "run", "-S", "wavelet=bior4.4", "dwt", mirror=mirror)
    assert "Running stage 'dwt'" in out and "Running stage 'download'" not in out
    shown = dvc(small_repo, "exp", "show", "--json", mirror=mirror)
    assert "bior4.4" in shown and "fashion_mnist" in shown


def test_tokenize_and_its_ablations(small_repo, mirror):
    dvc(small_repo, "repro", "tokenize", mirror=mirror)
    metrics = json.loads((small_repo / "reports/tokenize.json").read_text())
    assert metrics["method"] == "zeroblock" and metrics["train"]["length_max"] > 0
    assert (small_repo / "data/tokens/train/part-00000.parquet").is_file()
    out = dvc(small_repo, "exp", "run", "-S", "tokenizer.method=zerotree", "tokenize", mirror=mirror)
    assert "Running stage 'tokenize'" in out and "Running stage 'dwt'" not in out
    out = dvc(small_repo, "exp", "run", "-S", "tokenizer.final_exponent=-2", "tokenize", mirror=mirror)
    assert "Running stage 'tokenize'" in out
    shown = dvc(small_repo, "exp", "show", "--json", mirror=mirror)
    assert "zerotree" in shown and '"final_exponent": -2' in shown


def test_train_plots_and_position_ablation(small_repo, mirror):
    dvc(small_repo, "repro", "train", mirror=mirror)
    summary = json.loads((small_repo / "reports/train/metrics.json").read_text())
    assert summary["test"]["bits_per_token"] > 0 and summary["step"] == 4
    assert (small_repo / "data/model/model.safetensors").is_file()
    shown = dvc(small_repo, "metrics", "show", "--json", mirror=mirror)
    assert "bits_per_image" in shown
    dvc(small_repo, "plots", "show", "-o", "plots_html", mirror=mirror)
    html = (small_repo / "plots_html" / "index.html").read_text()
    assert "train/loss" in html.replace("\\", "/") or "loss.tsv" in html
    out = dvc(small_repo, "exp", "run", "-S", "model.position=sequence", "train", mirror=mirror)
    assert "Running stage 'train'" in out and "Running stage 'tokenize'" not in out


def test_sample_and_its_decoding_overrides(small_repo, mirror):
    dvc(small_repo, "repro", "sample", mirror=mirror)
    assert (small_repo / "data/samples/samples.parquet").is_file()
    assert (small_repo / "reports/samples/overview.png").is_file()
    for override in ("sample.top_k=2", "sample.cfg_scale=1.5"):  # both differ from the defaults
        out = dvc(small_repo, "exp", "run", "-S", override, "sample", mirror=mirror)
        assert "Running stage 'sample'" in out and "Running stage 'train'" not in out


METRIC_GROUPS = {
    "generated": {"inception", "classifier", "conditional_accuracy"},
    "real_floor": {"inception", "classifier"},
    "likelihood": {"test_bits_per_token", "test_bits_per_image", "test_images"},
    "tokenizer": {"test_psnr_db"}, "classifier": {"test_accuracy"},
    "counts": {"generated", "real_train", "reference_test"}, "extractors": {"inception", "classifier"},
}
INCEPTION = {"fid", "kid_mean", "kid_std", "precision", "recall", "f_score", "isc_mean", "isc_std"}


def test_whole_chain_and_ablations_with_metrics_diff(small_repo, mirror):
    # `dvc exp run` leaves its params applied to the workspace: start from the committed baseline.
    subprocess.run(["git", "checkout", "--", "params.yaml"], cwd=small_repo, check=True)
    dvc(small_repo, "repro", mirror=mirror)
    metrics = json.loads((small_repo / "reports/metrics.json").read_text())
    assert {k: set(v) for k, v in metrics.items()} == METRIC_GROUPS
    for group in ("generated", "real_floor"):
        assert set(metrics[group]["inception"]) == INCEPTION
        assert {"fid", "kid_mean", "kid_std", "isc_mean", "isc_std"} <= set(metrics[group]["classifier"])
    assert metrics["extractors"]["inception"] and "wavelet-classifier" in metrics["extractors"]["classifier"]
    assert metrics["generated"]["inception"]["fid"] is not None  # an Inception network was found offline
    assert "up to date" in dvc(small_repo, "repro", mirror=mirror)

    dvc(small_repo, "exp", "run", "-n", "bior", "-S", "wavelet=bior4.4", mirror=mirror)
    dvc(small_repo, "exp", "run", "-n", "fashion", "-S", "dataset=fashion_mnist", mirror=mirror)
    diff = json.loads(dvc(small_repo, "metrics", "diff", "bior", "fashion", "--json", mirror=mirror))
    assert "reports/metrics.json" in diff and "generated.classifier.fid" in diff["reports/metrics.json"]
    shown = dvc(small_repo, "exp", "show", "--json", mirror=mirror)
    assert "conditional_accuracy" in shown and "bior4.4" in shown and "fashion_mnist" in shown
