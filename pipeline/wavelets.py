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
    return pad_values(images / 255.0)


def pad_values(values: np.ndarray) -> np.ndarray:
    """(..., H, W) floats -> (..., M, M), centred in zeros."""
    h, w = values.shape[-2:]
    g = Geometry(h, w)
    out = np.zeros((*values.shape[:-2], g.size, g.size), dtype=np.float64)
    out[..., g.top:g.top + h, g.left:g.left + w] = values
    return out


# Colour: JPEG 2000's irreversible component transform (ICT, ITU-T T.800 Annex G.2), BT.601 luma
# and two colour differences. JPEG's YCbCr is the same matrix with 128 added to the chroma; the
# ICT keeps chroma centred on zero, as a sign-magnitude bit-plane coder wants (an offset would put
# a large constant into every chroma low-pass and spend the first planes on it). The language
# quantises anyway, so the reversible integer transform (RCT) would buy nothing.
ICT = np.array([[0.299, 0.587, 0.114], [-0.168736, -0.331264, 0.5], [0.5, -0.418688, -0.081312]])
ICT_INVERSE = np.linalg.inv(ICT)


def to_components(images: np.ndarray) -> np.ndarray:
    """(N, H, W, 3) uint8 RGB -> (N, 3, H, W) float64: Y in [0, 1], Cb and Cr in [-0.5, 0.5]."""
    return np.einsum("ck,nhwk->nchw", ICT, images / 255.0)


def to_rgb(components: np.ndarray) -> np.ndarray:
    """(N, 3, H, W) Y, Cb, Cr -> (N, H, W, 3) RGB floats (in [0, 1] for what to_components gave)."""
    return np.einsum("kc,nchw->nhwk", ICT_INVERSE, components)


def check_chroma(chroma: str | None) -> None:
    """How a language reads colour from dwt: None (grey), "full" or "half" (`dwt.chroma`)."""
    if chroma not in (None, "full", "half"):
        raise ValueError(f"chroma {chroma!r} is not one of full, half (or None: grey)")


def halve(values: np.ndarray) -> np.ndarray:
    """(..., H, W) -> (..., ceil(H/2), ceil(W/2)): the mean of each 2 x 2 block (an odd edge
    repeated), JPEG's 4:2:0 chroma."""
    h, w = values.shape[-2:]
    edge = [(0, 0)] * (values.ndim - 2) + [(0, h % 2), (0, w % 2)]
    even = np.pad(values, edge, mode="edge")
    return even.reshape(*even.shape[:-2], even.shape[-2] // 2, 2, even.shape[-1] // 2, 2).mean(axis=(-3, -1))


def double(values: np.ndarray, height: int, width: int) -> np.ndarray:
    """The inverse of `halve` up to its averaging: each value repeated over its 2 x 2 block,
    cropped to height x width."""
    return values.repeat(2, axis=-2).repeat(2, axis=-1)[..., :height, :width]


def colour_pixels(luma: np.ndarray, chroma: np.ndarray, wavelet: str, height: int, width: int,
                  halved: bool) -> np.ndarray:
    """Luma (N, M, M) and chroma (N, 2, M', M') coefficient matrices -> (N, H, W, 3) RGB values
    (in [0, 1] for exact coefficients): inverse DWTs, the chroma doubled back if it was halved, the
    inverse component transform."""
    y = crop(inverse(luma, wavelet), height, width)
    c = crop(inverse(chroma, wavelet), -(-height // 2) if halved else height, -(-width // 2) if halved else width)
    if halved:
        c = double(c, height, width)
    return to_rgb(np.concatenate([y[:, None], c], axis=1))


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
