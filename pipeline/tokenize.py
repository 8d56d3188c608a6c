"""Stage `tokenize`: DWT coefficients -> token sequences in Parquet shards.

Writes data/tokens/{train,test}/part-NNNNN.parquet and data/tokens/meta.json (spec section 9),
the tokenizer metrics reports/tokenize.json, and the figures in reports/tokenize/. With
`tokenizer.bpe_vocab_size`, byte-pair merges are learned on the training split's sequences
first; the tokenizer is recorded in meta.json and written beside the shards (tokenizer.json).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from . import dwt, figures, wavelets
from .formats import write_shard
from .idx import N_CLASSES, SPLITS
from .io import atomic_dir, write_json
from .language import BPELanguage, PixelLanguage, WaveletLanguage
from .params import Params
from .progress import log, track

PARAMS = ("dataset", "wavelet", "tokenizer")
IMAGE_SIZE = (28, 28)
PROGRESSIVE_EXAMPLES = 6


def language_for(p: Params, train_coeffs: np.ndarray):
    """The token language the params ask for, over the dwt stage's M x M coefficient matrices
    (BPE merges are learned on the training split's)."""
    settings = p.tokenizer
    if settings.method == "pixels":
        return PixelLanguage(p.wavelet, settings.pixel_levels, *IMAGE_SIZE)
    language = WaveletLanguage(p.wavelet, settings.method, settings.final_exponent, settings.initial_threshold,
                               train_coeffs.shape[-1], *IMAGE_SIZE)
    if not settings.bpe_vocab_size:
        return language
    log(f"learning BPE merges up to {settings.bpe_vocab_size} ids on {len(train_coeffs)} training sequences")
    language = BPELanguage.learn(language, np.asarray(train_coeffs), settings.bpe_vocab_size)
    log(f"BPE: {language.vocab_size} ids, the longest expanding to {language.vocabulary.depth} base tokens")
    return language


def psnr(decoded: np.ndarray, original: np.ndarray) -> np.ndarray:
    """Per-image PSNR in dB of uint8 decoded images against [0, 1] originals."""
    mse = ((decoded / 255.0 - original) ** 2).reshape(len(original), -1).mean(axis=1)
    return 10 * np.log10(1.0 / np.maximum(mse, 1e-20))


def tokenize_split(coeffs: np.ndarray, labels: np.ndarray, language, wavelet: str, shard_size: int,
                   out: Path, split: str) -> dict:
    """Encode one split shard by shard; returns its statistics."""
    (out / split).mkdir(parents=True)
    n = len(coeffs)
    lengths, e0s, psnrs = [], [], []
    plane_counts = np.zeros(0, dtype=np.int64)
    starts = range(0, n, shard_size)
    for shard, start in enumerate(track(starts, f"tokenize {split}", total=len(starts))):
        stop = min(n, start + shard_size)
        block = np.asarray(coeffs[start:stop])
        encoded = language.encode(block)
        write_shard(out / split / f"part-{shard:05d}.parquet", encoded, np.arange(start, stop),
                    labels[start:stop], language.vocab_size)
        lengths.append(encoded.lengths)
        e0s.append(encoded.initial_exponents)
        counts = np.bincount(encoded.bp)
        plane_counts = np.pad(plane_counts, (0, max(0, len(counts) - len(plane_counts))))
        plane_counts[:len(counts)] += counts
        original = wavelets.crop(wavelets.inverse(block, wavelet), *IMAGE_SIZE)
        psnrs.append(psnr(language.decode(encoded), original))
    lengths, e0s, psnrs = np.concatenate(lengths), np.concatenate(e0s), np.concatenate(psnrs)
    return {"lengths": lengths, "initial_exponents": e0s, "psnr": psnrs, "plane_counts": plane_counts}


def run(p: Params, dwt_root: str | Path = "data/dwt", out: str | Path = "data/tokens",
        metrics_path: str | Path = "reports/tokenize.json",
        figures_dir: str | Path = "reports/tokenize") -> dict:
    stats, meta_splits, labels_of = {}, {}, {}
    language = None
    with atomic_dir(out) as tmp:
        for split in SPLITS:
            coeffs, labels = dwt.load(split, dwt_root)
            language = language or language_for(p, coeffs)  # SPLITS starts with train
            split_stats = tokenize_split(coeffs, labels, language, p.wavelet, p.tokenizer.shard_size, tmp, split)
            stats[split], labels_of[split] = split_stats, np.asarray(labels)
            lengths = split_stats["lengths"]
            meta_splits[split] = {
                "images": int(len(lengths)), "tokens": int(lengths.sum()),
                "length_mean": float(lengths.mean()), "length_median": float(np.median(lengths)),
                "length_min": int(lengths.min()), "length_max": int(lengths.max()),
            }
            log(f"{split}: {len(lengths)} images, mean length {lengths.mean():.1f}, max {lengths.max()}, "
                f"PSNR {split_stats['psnr'].mean():.2f} dB")
        e0, train_labels = stats["train"]["initial_exponents"], labels_of["train"]
        meta = {
            "dataset": p.dataset, "language": language.describe(),
            "vocab_size": language.vocab_size, "token_names": language.token_names, "n_classes": N_CLASSES,
            "max_length": max(v["length_max"] for v in meta_splits.values()),
            "splits": meta_splits,
            # Per class, how often each initial exponent occurs in training: the sampler draws e0 from it.
            "initial_exponent_counts": {
                str(int(c)): {str(int(e)): int(n) for e, n in zip(*np.unique(e0[train_labels == c], return_counts=True))}
                for c in np.unique(train_labels)
            },
        }
        write_json(tmp / "meta.json", meta)
        for name, text in language.artifacts().items():
            (tmp / name).write_text(text)

    settings = p.tokenizer
    metrics = {"method": settings.method, "wavelet": p.wavelet, "final_exponent": settings.final_exponent,
               "pixel_levels": settings.pixel_levels, "vocab_size": language.vocab_size}
    for split, split_stats in stats.items():
        planes = split_stats["plane_counts"] / len(split_stats["lengths"])
        metrics[split] = {
            "length_mean": meta_splits[split]["length_mean"],
            "length_median": meta_splits[split]["length_median"],
            "length_max": meta_splits[split]["length_max"],
            "psnr_db": float(split_stats["psnr"].mean()),
            "psnr_db_min": float(split_stats["psnr"].min()),
            "tokens_per_image_by_plane": {str(b): round(float(v), 3) for b, v in enumerate(planes)},
        }
    write_json(metrics_path, metrics)

    figures_dir = Path(figures_dir)
    figures.histogram({split: split_stats["lengths"] for split, split_stats in stats.items()},
                      figures_dir / "length_histogram.png", "tokens per image",
                      f"Sequence lengths ({p.dataset}, {language.name})")
    test_coeffs, _ = dwt.load("test", dwt_root)
    examples = np.asarray(test_coeffs[:PROGRESSIVE_EXAMPLES])
    encoded = language.encode(examples)
    originals = wavelets.crop(wavelets.inverse(examples, p.wavelet), *IMAGE_SIZE)
    figures.progressive_figure(
        language, encoded, range(len(examples)), figures_dir / "progressive.png",
        [f"e0={e}\n{n} tok" for e, n in zip(encoded.initial_exponents, encoded.lengths)],
        f"Progressive decoding ({language.name})", originals=originals)
    return metrics


def main(p: Params, device: str) -> None:
    run(p)
