"""Stage `dwt`: pixels -> padded [0, 1] -> 2-D DWT coefficient matrices (float64), both splits.

Each image is checked for perfect reconstruction (inverse DWT back to the padded pixels); the
worst error goes into the stage's metrics and a failure stops the stage.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from . import wavelets
from .idx import N_CLASSES, SPLITS, load_split
from .io import InputError, atomic_dir, load_labels, load_npy, write_json
from .progress import log, track

PARAMS = ("dataset", "wavelet", "dwt")
RECONSTRUCTION_TOLERANCE = 1e-9
CHUNK = 4096


def transform(images: np.ndarray, wavelet: str) -> tuple[np.ndarray, float]:
    """(N, H, W) uint8 -> (N, M, M) float64 coefficients, and the worst reconstruction error."""
    n = len(images)
    size = wavelets.Geometry(*images.shape[1:]).size
    coeffs = np.empty((n, size, size), dtype=np.float64)
    worst = 0.0
    for start in track(range(0, n, CHUNK), f"dwt {wavelet}", total=(n + CHUNK - 1) // CHUNK):
        padded = wavelets.pad(images[start:start + CHUNK])
        coeffs[start:start + CHUNK] = wavelets.forward(padded, wavelet)
        restored = wavelets.inverse(coeffs[start:start + CHUNK], wavelet)
        worst = max(worst, float(np.abs(restored - padded).max()))
    return coeffs, worst


def run(dataset: str, wavelet: str, limit: int | None, raw_root: str | Path = "data/raw",
        out: str | Path = "data/dwt", metrics_path: str | Path = "reports/dwt.json") -> dict:
    metrics: dict = {"dataset": dataset, "wavelet": wavelet}
    with atomic_dir(out) as tmp:
        for split in SPLITS:
            images, labels = load_split(dataset, split, raw_root)
            images, labels = images[:limit], labels[:limit]
            coeffs, worst = transform(images, wavelet)
            if not worst < RECONSTRUCTION_TOLERANCE:
                raise RuntimeError(
                    f"{wavelet}: inverse DWT misses the {split} images by {worst:.3g} "
                    f"(tolerance {RECONSTRUCTION_TOLERANCE:g})"
                )
            np.save(tmp / f"{split}_coeffs.npy", coeffs)
            np.save(tmp / f"{split}_labels.npy", labels)
            metrics[split] = {
                "images": int(len(images)),
                "max_reconstruction_error": worst,
                "max_abs_coefficient": float(np.abs(coeffs).max()),
            }
            log(f"{split}: {len(images)} images, reconstruction error {worst:.2e}")
    write_json(metrics_path, metrics)
    return metrics


def load(split: str, root: str | Path = "data/dwt") -> tuple[np.ndarray, np.ndarray]:
    """Coefficients (N, M, M) float64 and labels (N,) int16 of one split (checked: InputError
    names a file that is not what this stage writes)."""
    root = Path(root)
    coeffs = load_npy(root / f"{split}_coeffs.npy", "dwt", mmap_mode="r")
    size = coeffs.shape[-1] if coeffs.ndim == 3 else 0
    if coeffs.ndim != 3 or coeffs.dtype != np.float64 or coeffs.shape[1] != size or size & (size - 1) \
            or size < 4 or not len(coeffs):
        raise InputError(root / f"{split}_coeffs.npy", f"holds {coeffs.dtype} of shape {coeffs.shape}, not "
                         "(N, M, M) float64 with M a power of two", "dwt")
    return coeffs, load_labels(root / f"{split}_labels.npy", len(coeffs), N_CLASSES, "dwt")


def main(p, device: str) -> None:
    run(p.dataset, p.wavelet, p.dwt.limit)
