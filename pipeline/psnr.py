"""PSNR, one definition for every stage and benchmark that reports one.

The image-coding convention: the PSNR of each uint8 image against its uint8 original (peak 255),
averaged over images. An image equal to its original has an infinite PSNR; the mean is taken over
the images that differ, and the share of equal ones is reported beside it (a lossless token
language has no finite PSNR at all).
"""
from __future__ import annotations

import numpy as np


def per_image(images: np.ndarray, originals: np.ndarray) -> np.ndarray:
    """PSNR in dB of each image against its original, both uint8 (N, H, W); inf where equal."""
    if images.shape != originals.shape:
        raise ValueError(f"images of shape {images.shape} against originals of shape {originals.shape}")
    error = images.astype(np.float64) - originals.astype(np.float64)
    mse = (error ** 2).reshape(len(images), -1).mean(axis=1)
    with np.errstate(divide="ignore"):
        return 10 * np.log10(255.0 ** 2 / mse)


def summary(values: np.ndarray) -> dict:
    """Mean and minimum of per-image PSNRs over the images that differ from their originals
    (None when none does), and the share of images equal to their originals."""
    finite = values[np.isfinite(values)]
    return {"psnr_db": float(finite.mean()) if len(finite) else None,
            "psnr_db_min": float(finite.min()) if len(finite) else None,
            "identical_share": float(1 - len(finite) / len(values)) if len(values) else 0.0}


def describe(figures: dict) -> str:
    """'12.34 dB' or 'identical' for a summary, for log lines."""
    return "identical" if figures["psnr_db"] is None else f"{figures['psnr_db']:.2f} dB"
