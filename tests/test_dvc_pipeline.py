"""The real `dvc repro` / `dvc exp run` on a temporary copy of the repository (small subset)."""
from __future__ import annotations

import json

import pytest
import torch
import yaml

from conftest import NO_INCEPTION, baseline, dvc, ran

pytestmark = pytest.mark.slow


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
    assert metrics["method"] == "zerotree" and metrics["train"]["length_max"] > 0
    assert (small_repo / "data/tokens/train/part-00000.parquet").is_file()
    out = dvc(small_repo, "exp", "run", "-S", "tokenizer.method=zeroblock", "tokenize", mirror=mirror)
    assert "Running stage 'tokenize'" in out and "Running stage 'dwt'" not in out
    out = dvc(small_repo, "exp", "run", "-S", "tokenizer.final_exponent=-2", "tokenize", mirror=mirror)
    assert "Running stage 'tokenize'" in out
    shown = dvc(small_repo, "exp", "show", "--json", mirror=mirror)
    assert "zeroblock" in shown and '"final_exponent": -2' in shown


def test_train_plots_and_position_ablation(small_repo, mirror):
    baseline(small_repo)
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
    baseline(small_repo)
    dvc(small_repo, "repro", "sample", mirror=mirror)
    assert (small_repo / "data/samples/samples.parquet").is_file()
    assert (small_repo / "reports/samples/overview.png").is_file()
    for override in ("sample.top_k=2", "sample.cfg_scale=1.5"):  # both differ from the defaults
        out = dvc(small_repo, "exp", "run", "-S", override, "sample", mirror=mirror)
        assert "Running stage 'sample'" in out and "Running stage 'train'" not in out


def test_gpu_profile_with_an_explicit_override(small_repo, mirror):
    # The explicit value wins over the profile's f = -3, and DVC's record says what ran.
    out = dvc(small_repo, "exp", "run", "-n", "gpu-f4", "-S", "profile=gpu", "-S", "tokenizer.final_exponent=-4",
              "tokenize", mirror=mirror)
    assert "Running stage 'tokenize'" in out
    assert json.loads((small_repo / "reports/tokenize.json").read_text())["final_exponent"] == -4
    composed = yaml.safe_load((small_repo / "params.yaml").read_text())
    assert composed["profile"] == "gpu" and composed["tokenizer"]["final_exponent"] == -4
    assert composed["model"]["n_embd"] == 768  # the rest of the profile applies
    shown = json.loads(dvc(small_repo, "exp", "show", "--json", mirror=mirror))
    runs = [exp for baseline in shown for exp in (baseline.get("experiments") or [])]
    run = next(r for r in runs if r.get("name") == "gpu-f4")
    params = run["revs"][0]["data"]["params"]["params.yaml"]["data"]
    assert params["profile"] == "gpu" and params["tokenizer"]["final_exponent"] == -4
    if not torch.cuda.is_available():  # the GPU profile stops at once without CUDA
        out = dvc(small_repo, "exp", "run", "-S", "profile=gpu", "train", mirror=mirror, ok=False)
        assert "profile='gpu' is sized for a GPU" in out and "WAVELET_DEVICE=cpu" in out
        assert "model:" not in out


SCORES = {"inception", "classifier", "conditional_accuracy"}
METRIC_GROUPS = {
    "generated": SCORES | {"decoding"}, "tuned": SCORES | {"decoding"},
    "real_floor": SCORES, "tokenizer_floor": SCORES,
    "likelihood": {"test_bits_per_token", "test_bits_per_image", "test_images"},
    "tokenizer": {"language", "test_psnr_db"}, "classifier": {"test_accuracy"},
    "compute": {"train_flops", "train_minutes", "sample_images_per_s"},
    "counts": {"generated", "real_train", "reference_test", "classes"}, "extractors": {"inception", "classifier"},
    "environment": {"device", "cpu", "cpu_cores", "gpu", "threads", "python", "torch", "numpy", "transformers"},
}
INCEPTION = {"fid", "kid_mean", "kid_std", "precision", "recall", "f_score", "isc_mean", "isc_std"}


def test_whole_chain_and_ablations_with_metrics_diff(small_repo, mirror):
    baseline(small_repo)
    dvc(small_repo, "repro", mirror=mirror)
    metrics = json.loads((small_repo / "reports/metrics.json").read_text())
    assert {k: set(v) for k, v in metrics.items()} == METRIC_GROUPS
    for group in ("generated", "tuned", "real_floor", "tokenizer_floor"):
        assert set(metrics[group]["inception"]) == INCEPTION
        assert {"fid", "kid_mean", "kid_std", "isc_mean", "isc_std"} <= set(metrics[group]["classifier"])
    assert metrics["extractors"]["inception"] and "wavelet-classifier" in metrics["extractors"]["classifier"]
    assert metrics["generated"]["inception"]["fid"] is not None  # an Inception network was found offline
    assert metrics["counts"]["classes"] == 2  # sample.classes: [0, 1], and the references follow
    assert json.loads((small_repo / "reports/classifier.json").read_text())["train_images"] == 2000  # its limit
    assert "up to date" in dvc(small_repo, "repro", mirror=mirror)

    # One sampling knob reruns the stages that sample (tune's grid is around the shared settings,
    # complete uses them) and evaluate; nothing is trained again.
    out = dvc(small_repo, "exp", "run", "-n", "topk", "-S", "sample.top_k=3", *NO_INCEPTION, mirror=mirror)
    assert ran(out) == {"sample", "tune", "complete", "evaluate"}, out
    completion = json.loads((small_repo / "reports/complete.json").read_text())
    assert set(completion["per_prefix_planes"]) == {"1", "2"}
    metrics = json.loads((small_repo / "reports/metrics.json").read_text())
    assert metrics["extractors"]["inception"] is None and metrics["generated"]["inception"]["fid"] is None
    assert completion["extractor"] is None and metrics["generated"]["classifier"]["fid"] is not None

    dvc(small_repo, "exp", "run", "-n", "bior", "-S", "wavelet=bior4.4", *NO_INCEPTION, mirror=mirror)
    dvc(small_repo, "exp", "run", "-n", "fashion", "-S", "dataset=fashion_mnist", *NO_INCEPTION, mirror=mirror)
    diff = json.loads(dvc(small_repo, "metrics", "diff", "bior", "fashion", "--json", mirror=mirror))
    assert "reports/metrics.json" in diff and "generated.classifier.fid" in diff["reports/metrics.json"]
    shown = dvc(small_repo, "exp", "show", "--json", mirror=mirror)
    assert "conditional_accuracy" in shown and "bior4.4" in shown and "fashion_mnist" in shown
