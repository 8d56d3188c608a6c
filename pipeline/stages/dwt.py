"""Stage `dwt`: pixels -> padded [0, 1] -> 2-D DWT coefficient matrices (float64), both splits.

Grey images give one matrix each (`<split>_coeffs.npy`). Colour images go through JPEG 2000's
irreversible component transform first (`pipeline.wavelets.ICT`): the luma's matrices are
`<split>_coeffs.npy`, the two chroma components' `<split>_chroma.npy` (N, 2, M', M'), at full
resolution or halved in both directions (`dwt.chroma: half`, JPEG's 4:2:0).

Each component is checked for perfect reconstruction (inverse DWT back to the padded values), and
colour for the inverse component transform back to the RGB values; the worst errors go into the
stage's metrics and a failure stops the stage.
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
    """(N, H, W) uint8 images, or float values already scaled (colour components) -> (N, M, M)
    float64 coefficients, and the worst reconstruction error."""
    n = len(images)
    size = wavelets.Geometry(*images.shape[1:]).size
    coeffs = np.empty((n, size, size), dtype=np.float64)
    worst = 0.0
    for start in track(range(0, n, CHUNK), f"dwt {wavelet}", total=(n + CHUNK - 1) // CHUNK):
        chunk = images[start:start + CHUNK]
        padded = wavelets.pad(chunk) if chunk.dtype == np.uint8 else wavelets.pad_values(chunk)
        coeffs[start:start + CHUNK] = wavelets.forward(padded, wavelet)
        restored = wavelets.inverse(coeffs[start:start + CHUNK], wavelet)
        worst = max(worst, float(np.abs(restored - padded).max()))
    return coeffs, worst


def transform_colour(images: np.ndarray, wavelet: str, chroma: str) -> tuple[np.ndarray, np.ndarray, float, float]:
    """(N, H, W, 3) uint8 RGB -> luma coefficients (N, M, M), chroma coefficients (N, 2, M', M'),
    the worst DWT reconstruction error over the components, and the worst error of the inverse
    component transform back to the RGB values."""
    components = wavelets.to_components(images)
    colour_error = float(np.abs(wavelets.to_rgb(components) - images / 255.0).max()) if len(images) else 0.0
    luma, worst = transform(components[:, 0], wavelet)
    colour = components[:, 1:] if chroma == "full" else wavelets.halve(components[:, 1:])
    flat, chroma_worst = transform(colour.reshape(-1, *colour.shape[2:]), wavelet)
    return luma, flat.reshape(len(images), 2, *flat.shape[1:]), max(worst, chroma_worst), colour_error


def _check(error: float, what: str) -> None:
    if not error < RECONSTRUCTION_TOLERANCE:
        raise RuntimeError(f"{what} by {error:.3g} (tolerance {RECONSTRUCTION_TOLERANCE:g})")


def run(dataset: str, wavelet: str, limit: int | None, chroma: str = "full", **paths: str | Path) -> dict:
    paths = stage_paths(INPUTS, OUTPUTS, paths, dataset=dataset)
    metrics: dict = {"dataset": dataset, "wavelet": wavelet}
    with atomic_dir(paths.dwt) as tmp:
        for split in SPLITS:
            images, labels = load_split(paths.raw, split)
            images, labels = images[:limit], labels[:limit]
            metrics[split] = {"images": int(len(images))}
            if images.ndim == 4:
                coeffs, chroma_coeffs, worst, colour_error = transform_colour(images, wavelet, chroma)
                _check(colour_error, f"the inverse component transform misses the {split} images")
                np.save(tmp / f"{split}_chroma.npy", chroma_coeffs)
                metrics[split].update(max_colour_transform_error=colour_error, chroma=chroma,
                                      max_abs_chroma_coefficient=float(np.abs(chroma_coeffs).max()))
            else:
                coeffs, worst = transform(images, wavelet)
            _check(worst, f"{wavelet}: inverse DWT misses the {split} images")
            np.save(tmp / f"{split}_coeffs.npy", coeffs)
            np.save(tmp / f"{split}_labels.npy", labels)
            metrics[split].update(max_reconstruction_error=worst, max_abs_coefficient=float(np.abs(coeffs).max()))
            log(f"{split}: {len(images)} images, reconstruction error {worst:.2e}")
        # What the padded M x M coefficients lose: the images' own size and channels, and the class names.
        write_json(tmp / DWT_IMAGE, {"height": int(images.shape[1]), "width": int(images.shape[2]),
                                     "channels": 3 if images.ndim == 4 else 1,
                                     "chroma": chroma if images.ndim == 4 else None,
                                     "classes": read_classes(paths.raw)})
    write_json(paths.metrics, metrics)
    return metrics


def main(p, device: str) -> None:
    run(p.dataset, p.wavelet, p.dwt.limit, p.dwt.chroma)
