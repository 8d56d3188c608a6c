"""Images to wavelet coefficient matrices and back (section 1 of the wavelet-language spec).

uint8 pixels -> [0, 1] -> zero-padded, centred M x M (M = 2^m) -> `pywt.wavedec2` with mode
"periodization" and level m - 1 (a 2 x 2 low-pass block) -> one M x M array laid out by
`pywt.coeffs_to_array`. Everything is float64: thresholds are powers of two and, with Haar,
coefficients sit exactly on them, so float32 would move ties.
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np
import pywt


@dataclass(frozen=True)
class Geometry:
    """Sizes of the padded square an image of height x width lives in."""

    height: int
    width: int

    @property
    def m(self) -> int:
        return max(1, int(np.ceil(np.log2(max(self.height, self.width)))))

    @property
    def size(self) -> int:  # M
        return 2**self.m

    @property
    def levels(self) -> int:
        return self.m - 1

    @property
    def top(self) -> int:
        return (self.size - self.height) // 2

    @property
    def left(self) -> int:
        return (self.size - self.width) // 2


def pad(images: np.ndarray) -> np.ndarray:
    """(N, H, W) uint8 -> (N, M, M) float64 in [0, 1], the image centred in zeros."""
    n, h, w = images.shape
    g = Geometry(h, w)
    out = np.zeros((n, g.size, g.size), dtype=np.float64)
    out[:, g.top:g.top + h, g.left:g.left + w] = images / 255.0
    return out


def crop(padded: np.ndarray, height: int, width: int) -> np.ndarray:
    g = Geometry(height, width)
    return padded[..., g.top:g.top + height, g.left:g.left + width]


def _slices(size: int, wavelet: str) -> list:
    """The coeffs_to_array layout of an M x M input (it depends only on M and the level)."""
    return pywt.coeffs_to_array(_wavedec(np.zeros((size, size)), wavelet))[1]


def _wavedec(padded: np.ndarray, wavelet: str) -> list:
    levels = int(np.log2(padded.shape[-1])) - 1
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # long filters at this depth warn about boundary effects
        return pywt.wavedec2(padded, wavelet, mode="periodization", level=levels, axes=(-2, -1))


def forward(padded: np.ndarray, wavelet: str) -> np.ndarray:
    """(N, M, M) pixels -> (N, M, M) coefficient matrices."""
    array, _ = pywt.coeffs_to_array(_wavedec(padded, wavelet), axes=(-2, -1))
    return array


def inverse(coeffs: np.ndarray, wavelet: str) -> np.ndarray:
    """(N, M, M) coefficient matrices -> (N, M, M) pixels (still padded)."""
    size = coeffs.shape[-1]
    slices = _slices(size, wavelet)
    # array_to_coeffs cannot take a batch axis, so apply its 2-D slices under a leading ellipsis.
    structure = [coeffs[(Ellipsis, *slices[0])]] + [
        tuple(coeffs[(Ellipsis, *level[key])] for key in ("da", "ad", "dd")) for level in slices[1:]
    ]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        pixels = pywt.waverec2(structure, wavelet, mode="periodization", axes=(-2, -1))
    return pixels


def to_uint8(pixels: np.ndarray) -> np.ndarray:
    """[0, 1] floats -> 0..255, clipped and rounded."""
    return np.clip(np.rint(pixels * 255.0), 0, 255).astype(np.uint8)
