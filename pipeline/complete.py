"""Stage `complete`: wavelet-domain completion of real test images.

The wavelet language is coarse to fine, so the first k bit-planes of an image are a coarse
version of it; the model can write the remaining planes. For each k in `complete.prefix_planes`,
`complete.images` real test images (in the sampled class mix) keep their first k planes (their
token prefix, prefilled into the decoder in one pass) and the model writes the rest,
`complete.completions` times each, at the shared decoding settings. Reported per k: the PSNR of
the prefix alone and of the completions to the original, the completions' classifier-FID and FID
against real test images (the reported half), their conditional accuracy, and how much the
completions of one image differ from each other. Completions are grammar-valid and canonical
like every sample. Languages without bit-planes (pixels) and diffusion models have no such
prefix: the stage says so in its report and completes nothing.
"""
from __future__ import annotations

from dataclasses import asdict
from pathlib import Path

import numpy as np

from . import figures, formats
from .coder import Encoded
from .devices import resolve_device
from .idx import load_split
from .io import write_json
from .metrics import Scorer, class_matched, references
from .params import Params
from .progress import log
from .sample import class_list, decoding_of, generate, load_sampler

PARAMS = ("profile", "dataset", "sample", "complete")
SHOWN = 3  # images per k in the figure


def prefixes_of(encoded: Encoded, planes: int) -> Encoded:
    """The first `planes` bit-planes of every sequence: the tokens that start in them (with BPE,
    the last of them may run on into the next plane; the model writes from its end)."""
    keep = encoded.bp < planes
    lengths = np.add.reduceat(keep.astype(np.int64), encoded.offsets[:-1]) if len(encoded) else np.zeros(0, np.int64)
    lengths[encoded.lengths == 0] = 0
    return Encoded(encoded.tokens[keep], encoded.bp[keep], encoded.i1[keep], encoded.i2[keep],
                   np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64), encoded.initial_exponents)


def psnr(images: np.ndarray, originals: np.ndarray) -> float | None:
    """PSNR (dB) of the mean squared error over all the images (a completion can equal its
    original, whose own PSNR would be infinite); None when every image is its original."""
    mse = float(((images / 255.0 - originals / 255.0) ** 2).mean())
    return None if mse == 0 else float(10 * np.log10(1.0 / mse))


def run(p: Params, device_name: str = "auto", model_dir: str | Path = "data/model",
        tokens_root: str | Path = "data/tokens", classifier_dir: str | Path = "data/classifier",
        raw_root: str | Path = "data/raw", metrics_path: str | Path = "reports/complete.json",
        figures_dir: str | Path = "reports/complete") -> dict:
    settings = p.complete
    device = resolve_device(device_name, p.profile)
    sampler = load_sampler(model_dir, device)
    if not sampler.autoregressive or not sampler.language.bit_planes:
        summary = {"skipped": f"{sampler.language.name}: no bit-planes to keep (wavelet languages only)"}
        write_json(metrics_path, summary)
        figures_dir = Path(figures_dir)
        figures_dir.mkdir(parents=True, exist_ok=True)
        log(f"complete: {summary['skipped']}")
        return summary
    model, language = sampler.model, sampler.language
    classes = np.array(class_list(p.sample.classes, sampler.n_classes))
    test = formats.read_split(tokens_root, "test")
    rng = np.random.default_rng(settings.seed)
    chosen = class_matched(test.labels, classes, max(1, settings.images // len(classes)), rng,
                           f"complete.images={settings.images}")
    real = test.encoded.select(chosen)
    labels = test.labels[chosen].astype(np.int64)
    originals = language.decode(real)  # the images as the tokenizer has them (the last plane's detail)
    test_images, test_labels = load_split(p.dataset, "test", raw_root)
    reference = references(test_images, test_labels, "reported", classes, len(chosen) // len(classes), rng,
                           f"complete.images={settings.images}")
    scorer = Scorer(reference, classifier_dir, 100, kid_subset_size=len(reference) // 2,
                    cuda=device.type == "cuda")
    decoding = decoding_of(p.sample)
    repeat = settings.completions
    results, shown = {}, []
    for planes in settings.prefix_planes:
        prefixes = prefixes_of(real, planes)
        rows = np.repeat(np.arange(len(chosen)), repeat)
        completed = generate(model, labels[rows], real.initial_exponents[rows].astype(np.int64), decoding,
                             seed=settings.seed * 1000 + planes, slots=p.sample.batch_size,
                             prefixes=prefixes.select(rows))
        images = language.decode(completed)
        prefix_images = language.decode(prefixes)
        scores, _ = scorer.score(images, labels[rows])
        spread = images.reshape(len(chosen), repeat, -1).astype(np.float64).std(axis=1).mean() / 255.0
        results[str(planes)] = {
            "prefix_tokens_mean": float(prefixes.lengths.mean()),
            "whole_prefix_share": float((prefixes.lengths == real.lengths).mean()),  # nothing left to write
            "psnr_prefix_db": psnr(prefix_images, originals),
            "psnr_completion_db": psnr(images, originals[rows]),
            "completion_spread": float(spread),
            "classifier_fid": scores["classifier"]["fid"], "fid": scores["inception"]["fid"],
            "conditional_accuracy": scores["conditional_accuracy"],
            "completed_sequences": int(len(rows)),
        }
        db = {key: "identical" if value is None else f"{value:.2f} dB"
              for key, value in results[str(planes)].items() if key.startswith("psnr")}
        log(f"complete k={planes}: PSNR prefix {db['psnr_prefix_db']}, completions {db['psnr_completion_db']}, "
            f"classifier-FID {scores['classifier']['fid']:.1f}")
        shown.append((planes, prefix_images[:SHOWN], images.reshape(len(chosen), repeat, *images.shape[1:])[:SHOWN]))
    summary = {"per_prefix_planes": results, "images": int(len(chosen)), "completions_per_image": repeat,
               "decoding": asdict(decoding), "extractor": scorer.inception_name}
    write_json(metrics_path, summary)
    _figure(originals[:SHOWN], shown, Path(figures_dir) / "completions.png")
    return summary


def _figure(originals: np.ndarray, shown: list, path: Path) -> None:
    """Per k and image: the original, its first k planes, and the model's completions."""
    rows, labels = [], []
    for planes, prefix_images, completions in shown:
        for j in range(len(originals)):
            rows.append(np.concatenate([originals[j:j + 1], prefix_images[j:j + 1], completions[j]]) / 255.0)
            labels.append(f"k={planes}")
    columns = ["original", "prefix"] + [f"completion {c + 1}" for c in range(len(shown[0][2][0]))]
    figures.image_grid(np.stack(rows), path, labels, columns,
                       title="Wavelet-domain completion: the first k bit-planes of real test images, completed by the model")


def main(p: Params, device: str) -> None:
    run(p, device)

