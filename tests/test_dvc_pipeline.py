"""The real `dvc repro` / `dvc exp run` on a temporary copy of the repository (small subset)."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from conftest import repo_copy

pytestmark = pytest.mark.slow


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


STAGES = ("download", "dwt", "tokenize", "train", "sample", "train_classifier", "tune", "complete", "evaluate")


def ran(out: str) -> set[str]:
    return {stage for stage in STAGES if f"Running stage '{stage}'" in out}


@pytest.mark.parametrize("name,overrides,family", [
    ("pixels", ["tokenizer.method=pixels"], "transformer"),
    ("diffusion", ["family=diffusion"], "diffusion"),
])
def test_the_baselines_run_through_the_same_stages(small_repo, mirror, name, overrides, family):
    baseline(small_repo)
    out = dvc(small_repo, "exp", "run", "-n", name, *[arg for o in overrides for arg in ("-S", o)], *NO_INCEPTION, mirror=mirror)
    assert {"tokenize", "train", "sample", "tune", "complete", "evaluate"} <= ran(out), out
    assert "skipped" in json.loads((small_repo / "reports/complete.json").read_text())
    metrics = json.loads((small_repo / "reports/metrics.json").read_text())
    assert metrics["tokenizer"]["language"].startswith("pixels")
    assert metrics["compute"]["train_flops"] > 0 and metrics["generated"]["classifier"]["fid"] > 0
    composed = yaml.safe_load((small_repo / "params.yaml").read_text())
    assert composed["model"]["family"] == family
    shown = json.loads(dvc(small_repo, "exp", "show", "--json", mirror=mirror))
    runs = {r.get("name"): r for baseline_rev in shown for r in (baseline_rev.get("experiments") or [])}
    recorded = runs[name]["revs"][0]["data"]
    assert recorded["params"]["params.yaml"]["data"]["model"]["family"] == family
    assert "compute" in recorded["metrics"]["reports/metrics.json"]["data"]


def test_bpe_runs_through_the_same_stages(small_repo, mirror):
    """`-S tokenizer.bpe_vocab_size=N` learns merges in tokenize and every later stage drives the
    merged language; the tokenizer lands beside the shards and the model."""
    baseline(small_repo)
    out = dvc(small_repo, "exp", "run", "-n", "bpe", "-S", "tokenizer.bpe_vocab_size=24", *NO_INCEPTION, mirror=mirror)
    assert {"tokenize", "train", "sample", "tune", "complete", "evaluate"} <= ran(out), out
    meta = json.loads((small_repo / "data/tokens/meta.json").read_text())
    assert meta["language"]["family"] == "bpe" and meta["vocab_size"] == 24
    for folder in ("data/tokens", "data/model"):
        assert json.loads((small_repo / folder / "tokenizer.json").read_text())["model"]["type"] == "BPE"
    tokenized = json.loads((small_repo / "reports/tokenize.json").read_text())
    assert tokenized["vocab_size"] == 24
    completion = json.loads((small_repo / "reports/complete.json").read_text())
    assert set(completion["per_prefix_planes"]) == {"1", "2"}
    metrics = json.loads((small_repo / "reports/metrics.json").read_text())
    assert metrics["tokenizer"]["language"].endswith("BPE 24")
    assert metrics["likelihood"]["test_bits_per_image"] > 0 and metrics["generated"]["classifier"]["fid"] > 0
    shown = json.loads(dvc(small_repo, "exp", "show", "--json", mirror=mirror))
    runs = {r.get("name"): r for baseline_rev in shown for r in (baseline_rev.get("experiments") or [])}
    assert runs["bpe"]["revs"][0]["data"]["params"]["params.yaml"]["data"]["tokenizer"]["bpe_vocab_size"] == 24


def _shapes_folder(root: Path, per_class: int = 60) -> None:
    """A user's image folder: three classes of shapes (a bar, a column, a disc) at mixed sizes and
    modes (grey, RGB, palette), with noise."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    for c, name in enumerate(("bar", "column", "disc")):
        (root / name).mkdir(parents=True)
        for i in range(per_class):
            size = (20, 24) if i % 2 else (30, 30)
            y, x = np.mgrid[:size[1], :size[0]]
            cy, cx = size[1] / 2 + rng.normal(0, 2), size[0] / 2 + rng.normal(0, 2)
            shape = [abs(y - cy) < 3, abs(x - cx) < 3, (y - cy) ** 2 + (x - cx) ** 2 < 36][c]
            pixels = np.clip(shape * 200 + rng.normal(20, 10, shape.shape), 0, 255).astype(np.uint8)
            image = Image.fromarray(pixels, "L")
            image = [image, image.convert("RGB"), image.convert("P")][i % 3]
            image.save(root / name / f"{i}.png")


def test_a_users_grey_folder_at_another_size_runs_every_stage(small_repo, mirror, tmp_path):
    """`-S dataset=folder -S folder.path=... -S image.size=16`: the images, languages, models,
    classifier and samples follow the folder's size and classes (3 here, not MNIST's 10)."""
    import numpy as np

    from pipeline.formats import read_samples

    baseline(small_repo)
    _shapes_folder(tmp_path / "shapes")
    out = dvc(small_repo, "exp", "run", "-n", "shapes16", *NO_INCEPTION, "-S", "dataset=folder", "-S",
              f"folder.path={tmp_path / 'shapes'}", "-S", "folder.test_share=0.34", "-S", "image.size=16",
              mirror=mirror)
    assert ran(out) == set(STAGES), out
    assert np.load(small_repo / "data/raw/folder/train_images.npy").shape[1:] == (16, 16)
    meta = json.loads((small_repo / "data/tokens/meta.json").read_text())
    assert meta["classes"] == ["bar", "column", "disc"] and meta["n_classes"] == 3
    assert (meta["language"]["image_height"], meta["language"]["image_width"], meta["language"]["size"]) == (16, 16, 16)
    samples = read_samples(small_repo / "data/samples/samples.parquet", 16, 16)
    assert samples.images.shape[1:] == (16, 16) and set(samples.labels.tolist()) == {0, 1}
    metrics = json.loads((small_repo / "reports/metrics.json").read_text())
    assert metrics["counts"]["classes"] == 2 and metrics["generated"]["classifier"]["fid"] > 0
    classifier = torch.load(small_repo / "data/classifier/classifier.pt", weights_only=False)
    assert classifier["n_classes"] == 3 and classifier["weights"]["out.weight"].shape == (3, 128)
    assert 0 <= json.loads((small_repo / "reports/classifier.json").read_text())["test_accuracy"] <= 1
