"""The wavelet language (the paper's): the scan grammar of `grammar` and the embedded coder of
`coder` over the dwt stage's M x M coefficient matrices, as one implementation of the token
language interface (`base`)."""
from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

import numpy as np

from .. import wavelets
from . import coder, context, grammar
from .encoded import Encoded

WAVELET_METHODS = tuple(grammar.METHODS)


@dataclass(frozen=True)
class WaveletLanguage:
    """The wavelet language of one (wavelet, method, f, thresholds) over M x M DWT matrices; f is
    one int, or one per decomposition level (coarse to fine, non-decreasing; `grammar.Language`)."""

    wavelet: str
    method: str = "zeroblock"
    final_exponent: int | tuple[int, ...] = -3
    initial_threshold: str = "per_image"
    size: int = 32  # M: positions i1, i2 lie in 0..M-1
    image_height: int = 28
    image_width: int = 28

    family = "wavelet"
    bit_planes = True  # sequences run coarse to fine, plane by plane (completion keeps the first k)
    has_context = True  # its scan state gives context features (`context`)

    def __post_init__(self):
        if isinstance(self.final_exponent, list):  # from a description (JSON): keep the language hashable
            object.__setattr__(self, "final_exponent", tuple(self.final_exponent))

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
        """The initial exponents images of [0, 1] pixels can have: from min f + 1 (a blank image)
        to m (max|a| <= 2^(m-1), spec section 1), or m - 1 for uniform thresholds."""
        m = self.grammar.m
        return (m - 1, m - 1) if self.initial_threshold == "uniform" else (self.grammar.min_final_exponent + 1, m)

    @property
    def max_planes(self) -> int:
        """Bit-planes of the longest sequence (bp lies in 0..max_planes-1)."""
        return self.e0_range[1] - self.grammar.min_final_exponent

    @property
    def name(self) -> str:
        f = self.final_exponent
        f_text = f"({','.join(map(str, f))})" if isinstance(f, tuple) else str(f)
        return f"{self.wavelet}, {self.method}, f={f_text}"

    def describe(self) -> dict:
        f = self.final_exponent
        return {"family": self.family, "wavelet": self.wavelet, "method": self.method,
                "final_exponent": list(f) if isinstance(f, tuple) else f, "initial_threshold": self.initial_threshold,
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

    def check(self, encoded: Encoded) -> None:
        """ValueError naming the first sequence that breaks the grammar (ids, canonical form,
        positions, completeness)."""
        self.mask_codes(encoded)

    def valid_ids(self, encoded: Encoded) -> np.ndarray:
        """(tokens, vocab_size) bool: the ids valid in front of each token (what training masks);
        checks the sequences like `check`."""
        return grammar.masks_to_bool(self.mask_codes(encoded))

    def mask_codes(self, encoded: Encoded) -> np.ndarray:
        """Per token, the grammar's bitmask of the ids valid in front of it."""
        return grammar.sequence_masks(encoded.tokens, encoded.offsets, encoded.initial_exponents, self.grammar,
                                      (encoded.bp, encoded.i1, encoded.i2))

    def scan(self, initial_exponents) -> grammar.BatchScan:
        """A batch of scan states at the start of sequences with the given e0."""
        return grammar.BatchScan(self.grammar, initial_exponents)

    def context(self, encoded: Encoded) -> np.ndarray:
        """(tokens, 4) the scan-state features in front of each token (`languages.context`)."""
        return context.of_sequences(encoded.tokens, encoded.offsets, encoded.initial_exponents, self.grammar)

    def scan_context(self, scan: grammar.BatchScan) -> np.ndarray:
        """(B, 4) the scan-state features of each row's next token."""
        return context.of_scan(scan)

    def artifacts(self) -> dict[str, str]:
        """Files (name -> text) that go beside the shards and the model: none."""
        return {}
