"""Stage `tokenize`: DWT coefficients -> token sequences in Parquet shards.

Writes data/tokens/{train,test}/part-NNNNN.parquet and data/tokens/meta.json (spec section 9),
the tokenizer metrics reports/tokenize.json, and the figures in reports/tokenize/. With
`tokenizer.bpe_vocab_size`, byte-pair merges are learned on the training split's sequences
first; the tokenizer is recorded in meta.json and written beside the shards (tokenizer.json).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from .. import figures, psnr, wavelets
from ..formats import read_dwt, read_dwt_chroma, read_dwt_image, write_shard
from ..idx import SPLITS
from ..io import atomic_dir, stage_paths, write_json
from ..languages.bpe import BPELanguage
from ..languages.pixels import PixelLanguage
from ..languages.wavelet import WaveletLanguage
from ..params import Params
from ..progress import log, track

PARAMS = ("dataset", "image", "wavelet", "tokenizer")
INPUTS = {"dwt": "data/dwt"}
OUTPUTS = {"tokens": "data/tokens", "metrics": "reports/tokenize.json",
           "length_histogram": "reports/tokenize/length_histogram.png",
           "progressive": "reports/tokenize/progressive.png"}
PROGRESSIVE_EXAMPLES = 6


def language_for(p: Params, train_coeffs, image: dict):
    """The token language the params ask for, over the dwt stage's coefficient matrices of the
    images `image` describes (dwt's image.json; BPE merges are learned on the training split's).
    Colour coefficients are the pair (luma, chroma)."""
    settings = p.tokenizer
    height, width, colour = image["height"], image["width"], image.get("channels") == 3
    if settings.method == "pixels":
        return PixelLanguage(p.wavelet, settings.pixel_levels, height, width, image["chroma"] if colour else None)
    luma = train_coeffs[0] if colour else train_coeffs
    language = WaveletLanguage(p.wavelet, settings.method, settings.final_exponent, settings.initial_threshold,
                               luma.shape[-1], height, width, image["chroma"] if colour else None,
                               settings.chroma_final_exponent if colour else None)
    if not settings.bpe_vocab_size:
        return language
    log(f"learning BPE merges up to {settings.bpe_vocab_size} ids on {len(luma)} training sequences")
    coeffs = (np.asarray(train_coeffs[0]), np.asarray(train_coeffs[1])) if colour else np.asarray(train_coeffs)
    language = BPELanguage.learn(language, coeffs, settings.bpe_vocab_size)
    log(f"BPE: {language.vocab_size} ids, the longest expanding to {language.vocabulary.depth} base tokens")
    return language


def rows_of(coeffs, start: int, stop: int):
    """Images start..stop-1 of a split's coefficients (grey: an array; colour: the pair)."""
    if isinstance(coeffs, tuple):
        return tuple(np.asarray(part[start:stop]) for part in coeffs)
    return np.asarray(coeffs[start:stop])


def exact_images(coeffs, wavelet: str, image: dict) -> np.ndarray:
    """The images the coefficients transform back to exactly, as uint8: what the tokenizer's
    round trip is measured against."""
    height, width = image["height"], image["width"]
    if isinstance(coeffs, tuple):
        pixels = wavelets.colour_pixels(*coeffs, wavelet, height, width, image["chroma"] == "half")
    else:
        pixels = wavelets.crop(wavelets.inverse(coeffs, wavelet), height, width)
    return wavelets.to_uint8(pixels)


def tokenize_split(coeffs, labels: np.ndarray, language, wavelet: str, shard_size: int,
                   out: Path, split: str, image: dict) -> dict:
    """Encode one split shard by shard; returns its statistics."""
    (out / split).mkdir(parents=True)
    n = len(labels)
    lengths, e0s, psnrs = [], [], []
    plane_counts = np.zeros(0, dtype=np.int64)
    starts = range(0, n, shard_size)
    for shard, start in enumerate(track(starts, f"tokenize {split}", total=len(starts))):
        stop = min(n, start + shard_size)
        block = rows_of(coeffs, start, stop)
        encoded = language.encode(block)
        write_shard(out / split / f"part-{shard:05d}.parquet", encoded, np.arange(start, stop),
                    labels[start:stop], language.vocab_size, language.colour)
        lengths.append(encoded.lengths)
        e0s.append(encoded.initial_exponents)
        counts = np.bincount(encoded.bp)
        plane_counts = np.pad(plane_counts, (0, max(0, len(counts) - len(plane_counts))))
        plane_counts[:len(counts)] += counts
        psnrs.append(psnr.per_image(language.decode(encoded), exact_images(block, wavelet, image)))
    lengths, e0s, psnrs = np.concatenate(lengths), np.concatenate(e0s), np.concatenate(psnrs)
    return {"lengths": lengths, "initial_exponents": e0s, "psnr": psnrs, "plane_counts": plane_counts}


def run(p: Params, **paths: str | Path) -> dict:
    paths = stage_paths(INPUTS, OUTPUTS, paths)
    with atomic_dir(paths.tokens) as tmp:
        language, stats = tokenize_splits(p, paths.dwt, tmp)
        write_json(tmp / "meta.json", token_meta(p, language, stats, read_dwt_image(paths.dwt)["classes"]))
        for name, text in language.artifacts().items():
            (tmp / name).write_text(text)
    metrics = tokenizer_metrics(p, language, stats)
    write_json(paths.metrics, metrics)
    tokenize_figures(p, language, stats, paths)
    return metrics


def tokenize_splits(p: Params, dwt_root: Path, out: Path) -> tuple:
    """Both splits into shards under `out`, in the language built on the training split (the
    first of SPLITS); the language and each split's statistics, labels and length summary."""
    stats, language, image = {}, None, read_dwt_image(dwt_root)
    for split in SPLITS:
        coeffs, labels = read_split_coefficients(dwt_root, split, image)
        language = language or language_for(p, coeffs, image)
        stats[split] = tokenize_split(coeffs, labels, language, p.wavelet, p.tokenizer.shard_size, out, split, image)
        stats[split]["labels"] = np.asarray(labels)
        lengths = stats[split]["lengths"]
        stats[split]["summary"] = {
            "images": int(len(lengths)), "tokens": int(lengths.sum()),
            "length_mean": float(lengths.mean()), "length_median": float(np.median(lengths)),
            "length_min": int(lengths.min()), "length_max": int(lengths.max()),
        }
        log(f"{split}: {len(lengths)} images, mean length {lengths.mean():.1f}, max {lengths.max()}, "
            f"PSNR {psnr.describe(psnr.summary(stats[split]['psnr']))}")
    return language, stats


def read_split_coefficients(dwt_root: Path, split: str, image: dict):
    """A split's coefficients (colour: the pair luma, chroma) and labels."""
    coeffs, labels = read_dwt(dwt_root, split)
    if image.get("channels") == 3:
        return (coeffs, read_dwt_chroma(dwt_root, split, len(coeffs))), labels
    return coeffs, labels


def token_meta(p: Params, language, stats: dict, classes: list[str]) -> dict:
    """meta.json (spec section 9): the language the later stages rebuild, and the splits' sizes."""
    e0, train_labels = stats["train"]["initial_exponents"], stats["train"]["labels"]
    return {
        "dataset": p.dataset, "language": language.describe(),
        "vocab_size": language.vocab_size, "token_names": language.token_names, "n_classes": len(classes),
        "classes": classes,
        "max_length": max(split_stats["summary"]["length_max"] for split_stats in stats.values()),
        "splits": {split: split_stats["summary"] for split, split_stats in stats.items()},
        # Per class, how often each initial exponent occurs in training: the sampler draws e0 from it.
        "initial_exponent_counts": {
            str(int(c)): {str(int(e)): int(n) for e, n in zip(*np.unique(e0[train_labels == c], return_counts=True))}
            for c in np.unique(train_labels)
        },
    }


def tokenizer_metrics(p: Params, language, stats: dict) -> dict:
    """reports/tokenize.json: sequence lengths, the PSNR of decoding, tokens per bit-plane."""
    settings = p.tokenizer
    metrics = {"method": settings.method, "wavelet": p.wavelet, "final_exponent": settings.final_exponent,
               "pixel_levels": settings.pixel_levels, "vocab_size": language.vocab_size}
    if language.colour:
        metrics["chroma_final_exponent"] = settings.chroma_final_exponent
    for split, split_stats in stats.items():
        planes = split_stats["plane_counts"] / len(split_stats["lengths"])
        metrics[split] = {
            "length_mean": split_stats["summary"]["length_mean"],
            "length_median": split_stats["summary"]["length_median"],
            "length_max": split_stats["summary"]["length_max"],
            **psnr.summary(split_stats["psnr"]),
            "tokens_per_image_by_plane": {str(b): round(float(v), 3) for b, v in enumerate(planes)},
        }
    return metrics


def tokenize_figures(p: Params, language, stats: dict, paths) -> None:
    """The length histogram, and a few test images decoded coarse to fine."""
    figures.histogram({split: split_stats["lengths"] for split, split_stats in stats.items()},
                      paths.length_histogram, "tokens per image",
                      f"Sequence lengths ({p.dataset}, {language.name})")
    image = read_dwt_image(paths.dwt)
    test_coeffs, _ = read_split_coefficients(paths.dwt, "test", image)
    examples = rows_of(test_coeffs, 0, PROGRESSIVE_EXAMPLES)
    encoded = language.encode(examples)
    originals = exact_images(examples, p.wavelet, image) / 255.0
    figures.progressive_figure(
        language, encoded, range(len(examples)), paths.progressive,
        [f"e0={e}\n{n} tok" for e, n in zip(encoded.initial_exponents, encoded.lengths)],
        f"Progressive decoding ({language.name})", originals=originals)


def main(p: Params, device: str) -> None:
    run(p)
