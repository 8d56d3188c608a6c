"""The baselines, BPE, a user's folder and colour through the real `dvc exp run`, on a tiny
configuration in their own temporary copy of the repository (beside test_dvc_pipeline's, so that
two test workers share the dvc runs)."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import yaml

from conftest import NO_INCEPTION, STAGES, baseline, dvc, ran

pytestmark = pytest.mark.slow


@pytest.mark.parametrize("name,overrides,family", [
    ("pixels", ["tokenizer.method=pixels", "tokenizer.bpe_vocab_size=0"], "transformer"),
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
    language = meta["language"].get("base", meta["language"])  # the default merges: its base language
    assert (language["image_height"], language["image_width"], language["size"]) == (16, 16, 16)
    samples = read_samples(small_repo / "data/samples/samples.parquet", 16, 16, 1)
    assert samples.images.shape[1:] == (16, 16) and set(samples.labels.tolist()) == {0, 1}
    metrics = json.loads((small_repo / "reports/metrics.json").read_text())
    assert metrics["counts"]["classes"] == 2 and metrics["generated"]["classifier"]["fid"] > 0
    classifier = torch.load(small_repo / "data/classifier/classifier.pt", weights_only=False)
    assert classifier["n_classes"] == 3 and classifier["weights"]["out.weight"].shape == (3, 128)
    assert 0 <= json.loads((small_repo / "reports/classifier.json").read_text())["test_accuracy"] <= 1


# CIFAR-10-JPEG at f = 1 (luma and chroma): ~135 tokens per image; an untrained model's samples
# still run to thousands of tokens (or 3,072 pixels), so fewer of them than TINY's.
COLOUR = ("-S", "dataset=cifar10_jpeg", "-S", "tokenizer.final_exponent=1", "-S", "tokenizer.chroma_final_exponent=1",
          "-S", "train_classifier.epochs=1", "-S", "train_classifier.width=8", "-S", "sample.per_class=2",
          "-S", "tune.per_class=2", "-S", "tune.reference_per_class=2", "-S", "complete.images=2",
          "-S", "complete.completions=1", "-S", "eval.num_samples=4", "-S", "eval.reference_images=4",
          "-S", "eval.kid_subset_size=2")


@pytest.mark.parametrize("name,overrides,language", [
    ("cifar-wavelet", [], "bpe"),  # the default merges the colour wavelet language
    ("cifar-pixels", ["tokenizer.method=pixels", "tokenizer.bpe_vocab_size=0"], "pixels"),
    ("cifar-diffusion", ["family=diffusion"], "pixels"),
])
def test_colour_runs_every_stage(small_repo, mirror, name, overrides, language):
    """`-S dataset=cifar10_jpeg`: the colour wavelet language, the pixel language over RGB and the
    diffusion UNet on three channels, each through every stage; samples and scores in RGB."""
    import numpy as np
    import pyarrow.parquet as pq

    from pipeline.formats import read_samples

    baseline(small_repo)
    out = dvc(small_repo, "exp", "run", "-n", name, *NO_INCEPTION, *COLOUR,
              *[arg for o in overrides for arg in ("-S", o)], mirror=mirror)
    assert {"tokenize", "train", "sample", "tune", "complete", "evaluate"} <= ran(out), out
    meta = json.loads((small_repo / "data/tokens/meta.json").read_text())
    base = meta["language"].get("base", meta["language"])
    assert (meta["language"]["family"], base["family"], base["chroma"]) == (
        language, "wavelet" if language == "bpe" else language, "half")
    shard = next((small_repo / "data/tokens/train").glob("*.parquet"))
    assert "component" in pq.read_schema(shard).names
    samples = read_samples(small_repo / "data/samples/samples.parquet", 32, 32, 3)
    assert samples.images.shape[1:] == (32, 32, 3) and set(samples.labels.tolist()) == {0, 1}
    labels = np.load(small_repo / "data/raw/cifar10_jpeg/test_labels.npy")
    assert len(np.unique(labels[:200])) == 10  # the stored order is shuffled: dwt.limit keeps every class
    metrics = json.loads((small_repo / "reports/metrics.json").read_text())
    assert metrics["generated"]["classifier"]["fid"] > 0 and metrics["real_floor"]["classifier"]["fid"] >= 0
    classifier = torch.load(small_repo / "data/classifier/classifier.pt", weights_only=False)
    assert classifier["channels"] == 3 and classifier["weights"]["features.0.weight"].shape[1] == 3
