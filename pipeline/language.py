"""Token languages: what the stages drive to turn images into sequences and back.

A language says how an image becomes a sequence of ids (encode), how a sequence becomes an image
again (decode; any prefix decodes), where each token sits (bp, i1, i2), and which ids are valid
at each step: as codes into a table for training masks (`mask_codes`, `mask_table`) and as a
batch of scan states for sampling (`scan`). The tokenize, train, sample and evaluate stages use
only this interface; `describe()` is what meta.json and the model's config record, and
`from_description` rebuilds the language from it.

The wavelet language (the paper's) is the first implementation: the scan grammar of
`pipeline.grammar` and the coder of `pipeline.coder` over DWT coefficient matrices.
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

import numpy as np

from . import coder, grammar, wavelets
from .coder import Encoded

WAVELET_METHODS = tuple(grammar.METHODS)


@dataclass(frozen=True)
class WaveletLanguage:
    """The wavelet language of one (wavelet, method, f, thresholds) over M x M DWT matrices."""

    wavelet: str
    method: str = "zeroblock"
    final_exponent: int = -3
    initial_threshold: str = "per_image"
    size: int = 32  # M: positions i1, i2 lie in 0..M-1
    image_height: int = 28
    image_width: int = 28

    family = "wavelet"

    @cached_property
    def grammar(self) -> grammar.Language:
        return grammar.Language(self.size, self.method, self.final_exponent, self.initial_threshold)

    @property
    def vocab_size(self) -> int:
        return grammar.VOCAB_SIZE

    @property
    def token_names(self) -> list[str]:
        return list(grammar.TOKEN_NAMES)

    @property
    def e0_range(self) -> tuple[int, int]:
        """The initial exponents images of [0, 1] pixels can have: from f + 1 (a blank image) to
        m (max|a| <= 2^(m-1), spec section 1), or m - 1 for uniform thresholds."""
        m = self.grammar.m
        return (m - 1, m - 1) if self.initial_threshold == "uniform" else (self.final_exponent + 1, m)

    @property
    def max_planes(self) -> int:
        """Bit-planes of the longest sequence (bp lies in 0..max_planes-1)."""
        return self.e0_range[1] - self.final_exponent

    def describe(self) -> dict:
        return {"family": self.family, "wavelet": self.wavelet, "method": self.method,
                "final_exponent": self.final_exponent, "initial_threshold": self.initial_threshold,
                "size": self.size, "image_height": self.image_height, "image_width": self.image_width}

    # ----- images <-> sequences -----

    def encode(self, coeffs: np.ndarray) -> Encoded:
        """(N, M, M) DWT coefficient matrices (the dwt stage's output) -> sequences."""
        return coder.encode(coeffs, self.grammar)

    def encode_images(self, images: np.ndarray) -> Encoded:
        """(N, H, W) uint8 images -> sequences."""
        return self.encode(wavelets.forward(wavelets.pad(images), self.wavelet))

    def decode(self, encoded: Encoded) -> np.ndarray:
        """Sequences (or prefixes; checked against the grammar) -> (N, H, W) uint8 images."""
        approx = coder.decode_batch(encoded.tokens, encoded.offsets, encoded.initial_exponents, self.grammar)
        return wavelets.to_uint8(self._pixels(approx))

    def _pixels(self, approx: np.ndarray) -> np.ndarray:
        return wavelets.crop(wavelets.inverse(approx, self.wavelet), self.image_height, self.image_width)

    def progressive(self, encoded: Encoded, j: int) -> tuple[np.ndarray, list[str], np.ndarray]:
        """Sequence j decoded after each bit-plane, coarse to fine: images (planes, H, W) in
        [0, 1], their names, and the plane of each of the sequence's tokens."""
        planes = int(self.grammar.planes(encoded.initial_exponents[j]))
        approx = coder.decode_after_each_plane(encoded, j, self.grammar, planes)
        bp = encoded.bp[encoded.offsets[j]:encoded.offsets[j + 1]]
        return np.clip(self._pixels(approx), 0, 1), [f"after bp {b}" for b in range(planes)], bp

    # ----- the grammar, for training and sampling -----

    def mask_codes(self, encoded: Encoded) -> np.ndarray:
        """Per token, the code of the set of ids valid in front of it (rows of `mask_table`);
        ValueError names the first sequence that breaks the grammar (ids, canonical form,
        positions, completeness)."""
        return grammar.sequence_masks(encoded.tokens, encoded.offsets, encoded.initial_exponents, self.grammar,
                                      (encoded.bp, encoded.i1, encoded.i2))

    @cached_property
    def mask_table(self) -> np.ndarray:
        """(codes, vocab_size) bool: a code is the grammar's bitmask of valid ids."""
        return grammar.masks_to_bool(np.arange(1 << grammar.VOCAB_SIZE))

    def scan(self, initial_exponents) -> grammar.BatchScan:
        """A batch of scan states at the start of sequences with the given e0."""
        return grammar.BatchScan(self.grammar, initial_exponents)


LANGUAGES = {"wavelet": WaveletLanguage}


def from_description(description: dict) -> WaveletLanguage:
    """The language that `describe()` wrote (into meta.json or a model config)."""
    fields = dict(description)
    family = fields.pop("family", None)
    if family not in LANGUAGES:
        raise ValueError(f"language family {family!r} is not one of {', '.join(LANGUAGES)}")
    return LANGUAGES[family](**fields)
