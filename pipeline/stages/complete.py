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

from .. import figures, formats, psnr
from ..devices import resolve_device
from ..generation import class_list, decoding_of, sample_rows
from ..idx import load_split
from ..io import stage_paths, write_json
from ..languages.encoded import Encoded
from ..metrics import Scorer, class_matched, references
from ..models.samplers import load_sampler
from ..params import Params
from ..progress import log

PARAMS = ("profile", "threads", "dataset", "image", "sample", "complete", "eval")
INPUTS = {"model": "data/model", "tokens": "data/tokens", "classifier": "data/classifier", "raw": "data/raw/{dataset}"}
OUTPUTS = {"metrics": "reports/complete.json", "figures": "reports/complete"}
SHOWN = 3  # images per k in the figure


def prefixes_of(encoded: Encoded, planes: int) -> Encoded:
    """The first `planes` bit-planes of every sequence: the tokens that start in them (with BPE,
    the last of them may run on into the next plane; the model writes from its end)."""
    keep = encoded.bp < planes
    lengths = np.add.reduceat(keep.astype(np.int64), encoded.offsets[:-1]) if len(encoded) else np.zeros(0, np.int64)
    lengths[encoded.lengths == 0] = 0
    return Encoded(encoded.tokens[keep], encoded.bp[keep], encoded.i1[keep], encoded.i2[keep],
                   np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64), encoded.initial_exponents,
                   encoded.component[keep])


def run(p: Params, device_name: str = "auto", **paths: str | Path) -> dict:
    paths = stage_paths(INPUTS, OUTPUTS, paths, dataset=p.dataset)
    settings = p.complete
    device = resolve_device(device_name, p.profile)
    sampler = load_sampler(paths.model, device)
    if not sampler.autoregressive or not sampler.language.bit_planes:
        summary = {"skipped": f"{sampler.language.name}: no bit-planes to keep (wavelet languages only)"}
        write_json(paths.metrics, summary)
        paths.figures.mkdir(parents=True, exist_ok=True)
        log(f"complete: {summary['skipped']}")
        return summary
    language = sampler.language
    classes = np.array(class_list(p.sample.classes, sampler.n_classes))
    test = formats.read_split(paths.tokens, "test")
    rng = np.random.default_rng(settings.seed)
    chosen = class_matched(test.labels, classes, max(1, settings.images // len(classes)), rng,
                           f"complete.images={settings.images}")
    real = test.encoded.select(chosen)
    labels = test.labels[chosen].astype(np.int64)
    originals = language.decode(real)  # the images as the tokenizer has them (the last plane's detail)
    test_images, test_labels = load_split(paths.raw, "test")
    reference = references(test_images, test_labels, "reported", classes, len(chosen) // len(classes), rng,
                           f"complete.images={settings.images}")
    scorer = Scorer(reference, paths.classifier, 100, kid_subset_size=len(reference) // 2,
                    cuda=device.type == "cuda", inception=p.eval.inception, inception_weights=p.eval.inception_weights)
    decoding = decoding_of(p.sample)
    repeat = settings.completions
    results, shown = {}, []
    for planes in settings.prefix_planes:
        prefixes = prefixes_of(real, planes)
        rows = np.repeat(np.arange(len(chosen)), repeat)
        # The sampler interface of sample and tune: completion r of the rows draws from stream
        # (complete.seed, r) at every k (common random numbers make the k's comparable).
        completed = sample_rows(sampler, labels[rows], decoding, settings.seed, p.sample.batch_size,
                                prefixes=prefixes.select(rows))
        images = language.decode(completed)
        prefix_images = language.decode(prefixes)
        scores, _ = scorer.score(images, labels[rows])
        results[str(planes)] = _figures_of_k(prefixes, real, prefix_images, images, originals, rows, scores, repeat)
        log(f"complete k={planes}: PSNR prefix {psnr.describe(results[str(planes)]['prefix'])}, completions "
            f"{psnr.describe(results[str(planes)]['completion'])}, classifier-FID {scores['classifier']['fid']:.1f}")
        shown.append((planes, prefix_images[:SHOWN], images.reshape(len(chosen), repeat, *images.shape[1:])[:SHOWN]))
    summary = {"per_prefix_planes": results, "images": int(len(chosen)), "completions_per_image": repeat,
               "decoding": asdict(decoding), "extractor": scorer.inception_name}
    write_json(paths.metrics, summary)
    _figure(originals[:SHOWN], shown, paths.figures / "completions.png")
    return summary


def _figures_of_k(prefixes: Encoded, real: Encoded, prefix_images: np.ndarray, images: np.ndarray,
                  originals: np.ndarray, rows: np.ndarray, scores: dict, repeat: int) -> dict:
    """The figures of one k: prefix length, PSNR of the prefixes and of the completions to the
    tokenized originals, how much completions of one image differ, and the image-set scores."""
    spread = images.reshape(-1, repeat, *images.shape[1:]).astype(np.float64).std(axis=1).mean() / 255.0
    return {
        "prefix_tokens_mean": float(prefixes.lengths.mean()),
        "whole_prefix_share": float((prefixes.lengths == real.lengths).mean()),  # nothing left to write
        "prefix": psnr.summary(psnr.per_image(prefix_images, originals)),
        "completion": psnr.summary(psnr.per_image(images, originals[rows])),
        "completion_spread": float(spread),
        "classifier_fid": scores["classifier"]["fid"], "fid": scores["inception"]["fid"],
        "conditional_accuracy": scores["conditional_accuracy"],
        "completed_sequences": int(len(rows)),
    }


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

