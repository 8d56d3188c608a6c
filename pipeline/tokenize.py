"""Stage `tokenize`: DWT coefficients -> wavelet-language sequences in Parquet shards.

Writes data/tokens/{train,test}/part-NNNNN.parquet and data/tokens/meta.json (spec section 9),
the tokenizer metrics reports/tokenize.json, and the figures in reports/tokenize/.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from . import coder, dwt, figures, grammar, wavelets
from .grammar import Language
from .idx import SPLITS
from .io import atomic_dir, write_json
from .params import Params
from .progress import log, track
from .shards import write_shard

IMAGE_SIZE = (28, 28)
PROGRESSIVE_EXAMPLES = 6


def language_for(p: Params, size: int) -> Language:
    t = p.tokenizer
    return Language(size, t.method, t.final_exponent, t.initial_threshold)


def psnr(decoded: np.ndarray, original: np.ndarray) -> np.ndarray:
    """Per-image PSNR in dB of [0, 1] images (decoded is clipped to [0, 1] first)."""
    mse = ((np.clip(decoded, 0, 1) - original) ** 2).reshape(len(original), -1).mean(axis=1)
    return 10 * np.log10(1.0 / np.maximum(mse, 1e-20))


def tokenize_split(coeffs: np.ndarray, labels: np.ndarray, language: Language, wavelet: str,
                   shard_size: int, out: Path, split: str) -> dict:
    """Encode one split shard by shard; returns its statistics."""
    (out / split).mkdir(parents=True)
    n = len(coeffs)
    lengths, e0s, psnrs = [], [], []
    plane_counts = np.zeros(0, dtype=np.int64)
    starts = range(0, n, shard_size)
    for shard, start in enumerate(track(starts, f"tokenize {split}", total=len(starts))):
        stop = min(n, start + shard_size)
        block = np.asarray(coeffs[start:stop])
        encoded, approx = coder.encode(block, language, return_approximation=True)
        write_shard(out / split / f"part-{shard:05d}.parquet", encoded, np.arange(start, stop),
                    labels[start:stop])
        lengths.append(encoded.lengths)
        e0s.append(encoded.initial_exponents)
        counts = np.bincount(encoded.bp)
        plane_counts = np.pad(plane_counts, (0, max(0, len(counts) - len(plane_counts))))
        plane_counts[:len(counts)] += counts
        decoded = wavelets.crop(wavelets.inverse(approx, wavelet), *IMAGE_SIZE)
        original = wavelets.crop(wavelets.inverse(block, wavelet), *IMAGE_SIZE)
        psnrs.append(psnr(decoded, original))
    lengths, e0s, psnrs = np.concatenate(lengths), np.concatenate(e0s), np.concatenate(psnrs)
    return {"lengths": lengths, "initial_exponents": e0s, "psnr": psnrs, "plane_counts": plane_counts}


def progressive_figure(coeffs: np.ndarray, language: Language, wavelet: str, path: Path) -> None:
    """A few images decoded after each bit-plane, coarse to fine, next to the original."""
    encoded = coder.encode(np.asarray(coeffs), language)
    planes = int(language.planes(encoded.initial_exponents).max())
    cells = np.zeros((len(coeffs), planes + 1, *IMAGE_SIZE))
    for j in range(len(coeffs)):
        approx = coder.decode_after_each_plane(encoded, j, language, planes)
        cells[j, :planes] = wavelets.crop(wavelets.inverse(approx, wavelet), *IMAGE_SIZE)
        cells[j, planes] = wavelets.crop(wavelets.inverse(np.asarray(coeffs[j]), wavelet), *IMAGE_SIZE)
    counts = [f"bp {b}" for b in range(planes)] + ["original"]
    rows = [f"e0={e}\n{n} tok" for e, n in zip(encoded.initial_exponents, encoded.lengths)]
    figures.image_grid(cells, path, rows, counts,
                       title=f"Progressive decoding ({wavelet}, {language.method}, f={language.final_exponent})")


def run(p: Params, dwt_root: str | Path = "data/dwt", out: str | Path = "data/tokens",
        metrics_path: str | Path = "reports/tokenize.json",
        figures_dir: str | Path = "reports/tokenize") -> dict:
    t = p.tokenizer
    stats, meta_splits = {}, {}
    language = None
    with atomic_dir(out) as tmp:
        for split in SPLITS:
            coeffs, labels = dwt.load(split, dwt_root)
            language = language or language_for(p, coeffs.shape[-1])
            s = tokenize_split(coeffs, labels, language, p.wavelet, t.shard_size, tmp, split)
            stats[split] = s
            lengths = s["lengths"]
            meta_splits[split] = {
                "images": int(len(lengths)), "tokens": int(lengths.sum()),
                "length_mean": float(lengths.mean()), "length_median": float(np.median(lengths)),
                "length_min": int(lengths.min()), "length_max": int(lengths.max()),
            }
            if split == "train":
                train_labels = np.asarray(labels)
            log(f"{split}: {len(lengths)} images, mean length {lengths.mean():.1f}, max {lengths.max()}, "
                f"PSNR {s['psnr'].mean():.2f} dB")
        e0 = stats["train"]["initial_exponents"]
        meta = {
            "dataset": p.dataset, "wavelet": p.wavelet, "method": t.method,
            "final_exponent": t.final_exponent, "initial_threshold": t.initial_threshold,
            "image_height": IMAGE_SIZE[0], "image_width": IMAGE_SIZE[1], "size": language.size,
            "token_names": list(grammar.TOKEN_NAMES), "vocab_size": grammar.VOCAB_SIZE,
            "max_length": max(v["length_max"] for v in meta_splits.values()),
            "splits": meta_splits,
            # Per class, how often each initial exponent occurs in training: the sampler draws e0 from it.
            "initial_exponent_counts": {
                str(int(c)): {str(int(e)): int(n) for e, n in zip(*np.unique(e0[train_labels == c], return_counts=True))}
                for c in np.unique(train_labels)
            },
        }
        write_json(tmp / "meta.json", meta)

    metrics = {"method": t.method, "wavelet": p.wavelet, "final_exponent": t.final_exponent}
    for split, s in stats.items():
        planes = s["plane_counts"] / len(s["lengths"])
        metrics[split] = {
            "length_mean": meta_splits[split]["length_mean"],
            "length_median": meta_splits[split]["length_median"],
            "length_max": meta_splits[split]["length_max"],
            "psnr_db": float(s["psnr"].mean()),
            "psnr_db_min": float(s["psnr"].min()),
            "tokens_per_image_by_plane": {str(b): round(float(v), 3) for b, v in enumerate(planes)},
        }
    write_json(metrics_path, metrics)

    figures_dir = Path(figures_dir)
    figures.histogram({split: s["lengths"] for split, s in stats.items()},
                      figures_dir / "length_histogram.png", "tokens per image",
                      f"Sequence lengths ({p.dataset}, {p.wavelet}, {t.method}, f={t.final_exponent})")
    test_coeffs, _ = dwt.load("test", dwt_root)
    progressive_figure(test_coeffs[:PROGRESSIVE_EXAMPLES], language, p.wavelet,
                       figures_dir / "progressive.png")
    return metrics
