"""Stage `dwt`: pixels -> padded [0, 1] -> 2-D DWT coefficient matrices (float64), both splits.

Each image is checked for perfect reconstruction (inverse DWT back to the padded pixels); the
worst error goes into the stage's metrics and a failure stops the stage.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from .. import wavelets
from ..idx import DWT_IMAGE, SPLITS, load_split, read_classes
from ..io import atomic_dir, stage_paths, write_json
from ..progress import log, track

PARAMS = ("dataset", "image", "wavelet", "dwt")
INPUTS = {"raw": "data/raw/{dataset}"}
OUTPUTS = {"dwt": "data/dwt", "metrics": "reports/dwt.json"}
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


def run(dataset: str, wavelet: str, limit: int | None, **paths: str | Path) -> dict:
    paths = stage_paths(INPUTS, OUTPUTS, paths, dataset=dataset)
    metrics: dict = {"dataset": dataset, "wavelet": wavelet}
    with atomic_dir(paths.dwt) as tmp:
        for split in SPLITS:
            images, labels = load_split(paths.raw, split)
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
        # What the padded M x M coefficients lose: the images' own size, and the class names.
        write_json(tmp / DWT_IMAGE, {"height": int(images.shape[1]), "width": int(images.shape[2]),
                                     "classes": read_classes(paths.raw)})
    write_json(paths.metrics, metrics)
    return metrics


def main(p, device: str) -> None:
    run(p.dataset, p.wavelet, p.dwt.limit)
