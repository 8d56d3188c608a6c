"""The wavelet language (the paper's): the scan grammar of `grammar` and the embedded coder of
`coder` over the dwt stage's M x M coefficient matrices, as one implementation of the token
language interface (`base`). With `chroma` set it is the colour wavelet language (README, "The
colour wavelet language"): luma and two chroma matrices in one scan, decoding to RGB images."""
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
    one int, or one per decomposition level (coarse to fine, non-decreasing; `grammar.Language`).
    Colour: `chroma` full or half (the dwt stage's `dwt.chroma`) and the chroma's final exponent."""

    wavelet: str
    method: str = "zeroblock"
    final_exponent: int | tuple[int, ...] = -3
    initial_threshold: str = "per_image"
    size: int = 32  # M: positions i1, i2 lie in 0..M-1
    image_height: int = 28
    image_width: int = 28
    chroma: str | None = None  # None: grey; "full" or "half": colour, chroma at that resolution
    chroma_final_exponent: int | tuple[int, ...] | None = None

    family = "wavelet"
    bit_planes = True  # sequences run coarse to fine, plane by plane (completion keeps the first k)
    has_context = True  # its scan state gives context features (`context`)

    def __post_init__(self):
        for name in ("final_exponent", "chroma_final_exponent"):  # from a description (JSON): keep it hashable
            if isinstance(getattr(self, name), list):
                object.__setattr__(self, name, tuple(getattr(self, name)))
        wavelets.check_chroma(self.chroma)

    @property
    def colour(self) -> bool:
        return self.chroma is not None

    @property
    def chroma_height(self) -> int:
        return self.image_height if self.chroma == "full" else -(-self.image_height // 2)

    @property
    def chroma_width(self) -> int:
        return self.image_width if self.chroma == "full" else -(-self.image_width // 2)

    @cached_property
    def grammar(self) -> grammar.Language:
        chroma_size = wavelets.Geometry(self.chroma_height, self.chroma_width).size if self.colour else 0
        return grammar.Language(self.size, self.method, self.final_exponent, self.initial_threshold,
                                chroma_size, self.chroma_final_exponent)

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
        def text(f):
            return f"({','.join(map(str, f))})" if isinstance(f, tuple) else str(f)
        name = f"{self.wavelet}, {self.method}, f={text(self.final_exponent)}"
        return f"{name}, {self.chroma} chroma f={text(self.chroma_final_exponent)}" if self.colour else name

    def describe(self) -> dict:
        def value(f):
            return list(f) if isinstance(f, tuple) else f
        description = {"family": self.family, "wavelet": self.wavelet, "method": self.method,
                       "final_exponent": value(self.final_exponent), "initial_threshold": self.initial_threshold,
                       "size": self.size, "image_height": self.image_height, "image_width": self.image_width}
        if self.colour:  # a grey language's description (meta.json) stays as it was
            description.update(chroma=self.chroma, chroma_final_exponent=value(self.chroma_final_exponent))
        return description

    # ----- images <-> sequences -----

    def encode(self, coeffs) -> Encoded:
        """(N, M, M) DWT coefficient matrices (the dwt stage's output) -> sequences; colour: the
        pair luma (N, M, M), chroma (N, 2, M', M')."""
        return coder.encode(coeffs, self.grammar)

    def encode_images(self, images: np.ndarray) -> Encoded:
        """(N, H, W) uint8 images (colour: (N, H, W, 3) RGB) -> sequences."""
        if not self.colour:
            return self.encode(wavelets.forward(wavelets.pad(images), self.wavelet))
        components = wavelets.to_components(images)
        chroma = components[:, 1:] if self.chroma == "full" else wavelets.halve(components[:, 1:])
        return self.encode((wavelets.forward(wavelets.pad_values(components[:, 0]), self.wavelet),
                            wavelets.forward(wavelets.pad_values(chroma), self.wavelet)))

    def decode(self, encoded: Encoded) -> np.ndarray:
        """Sequences (or prefixes; checked against the grammar) -> (N, H, W) uint8 images
        (colour: (N, H, W, 3) RGB)."""
        approx = coder.decode_batch(encoded.tokens, encoded.offsets, encoded.initial_exponents, self.grammar)
        return wavelets.to_uint8(self.pixels(approx))

    def pixels(self, approx) -> np.ndarray:
        """Coefficient matrices (what `encode` takes) -> (N, H, W) pixel values, or (N, H, W, 3) RGB
        values: the inverse DWT, and for colour the chroma doubled back and the inverse ICT."""
        if not self.colour:
            return wavelets.crop(wavelets.inverse(approx, self.wavelet), self.image_height, self.image_width)
        return wavelets.colour_pixels(*approx, self.wavelet, self.image_height, self.image_width, self.chroma == "half")

    def progressive(self, encoded: Encoded, j: int) -> tuple[np.ndarray, list[str], np.ndarray]:
        """Sequence j decoded after each bit-plane, coarse to fine: images (planes, H, W) in
        [0, 1], their names, and the plane of each of the sequence's tokens."""
        planes = int(self.grammar.planes(encoded.initial_exponents[j]))
        approx = coder.decode_after_each_plane(encoded, j, self.grammar, planes)
        bp = encoded.bp[encoded.offsets[j]:encoded.offsets[j + 1]]
        return np.clip(self.pixels(approx), 0, 1), [f"after bp {b}" for b in range(planes)], bp

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
                                      (encoded.bp, encoded.i1, encoded.i2, encoded.component))

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
