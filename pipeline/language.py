"""Token languages: what the stages drive to turn images into sequences and back.

A language says how an image becomes a sequence of ids (encode), how a sequence becomes an image
again (decode; any prefix decodes), where each token sits (bp, i1, i2), and which ids are valid
at each step: per token of given sequences for training masks (`valid_ids`, `check`) and as a
batch of scan states for sampling (`scan`). The tokenize, train, sample and evaluate stages use
only this interface; `describe()` is what meta.json and the model's config record,
`from_description` rebuilds the language from it, and `artifacts()` are the files written beside
the shards and the model for other tools.

Both languages read what the dwt stage writes (DWT coefficient matrices, an exact representation
of the images) and decode to uint8 images:
- the wavelet language (the paper's): the scan grammar of `pipeline.grammar` and the coder of
  `pipeline.coder`;
- the BPE language (paper 3.2.3): the wavelet language with byte-pair merges of its ids
  (`pipeline.bpe`), so fewer, richer tokens per image;
- the pixel language (the baseline without wavelets): raster-order intensities quantised to a
  few levels, every id valid everywhere, every sequence height x width long.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from functools import cached_property

import numpy as np

from . import bpe, coder, grammar, wavelets
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
    bit_planes = True  # sequences run coarse to fine, plane by plane (completion keeps the first k)

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

    @property
    def name(self) -> str:
        return f"{self.wavelet}, {self.method}, f={self.final_exponent}"

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

    def artifacts(self) -> dict[str, str]:
        """Files (name -> text) that go beside the shards and the model: none."""
        return {}


class PixelScan:
    """A batch of raster scans over height x width pixels: the trivial grammar of the pixel
    language (the same interface as grammar.BatchScan)."""

    def __init__(self, language: "PixelLanguage", batch: int):
        self.language = language
        self.position = np.zeros(batch, np.int64)
        self.bp = np.zeros(batch, np.int64)
        self._observe()

    def _observe(self) -> None:
        width, total = self.language.image_width, self.language.image_height * self.language.image_width
        self.done = self.position >= total
        self.i1 = np.where(self.done, 0, self.position // width)
        self.i2 = np.where(self.done, 0, self.position % width)

    def valid(self) -> np.ndarray:
        valid = np.ones((len(self.position), self.language.vocab_size), bool)
        valid[self.done] = False
        return valid

    def step(self, tokens) -> None:
        tokens = np.asarray(tokens, dtype=np.int64).reshape(-1)
        if len(tokens) != len(self.position):
            raise ValueError(f"{len(tokens)} tokens for {len(self.position)} sequences")
        bad = np.flatnonzero(~self.done & ((tokens < 0) | (tokens >= self.language.vocab_size)))
        if len(bad):
            raise ValueError(f"sequence {bad[0]}: token {tokens[bad[0]]} is not a level 0..{self.language.vocab_size - 1}")
        self.position = np.where(self.done, self.position, self.position + 1)
        self._observe()

    def restart(self, rows, initial_exponents) -> None:
        self.position[np.asarray(rows, dtype=np.int64)] = 0
        self._observe()

    def advance(self, row: int, tokens) -> None:
        tokens = np.asarray(tokens, dtype=np.int64).reshape(-1)
        if self.position[row] + len(tokens) > self.language.length or (
                len(tokens) and (tokens.min() < 0 or tokens.max() >= self.language.vocab_size)):
            raise ValueError(f"row {row}: the prefix does not fit the {self.language.length} pixel levels")
        self.position[row] += len(tokens)
        self._observe()

    def keep(self, rows) -> None:
        self.position = self.position[np.asarray(rows, dtype=np.int64)]
        self.bp = np.zeros(len(self.position), np.int64)
        self._observe()


@dataclass(frozen=True)
class PixelLanguage:
    """Raster-order pixel intensities quantised to `levels` evenly spaced values (0 and 255
    included): the same transformer without the wavelet language."""

    wavelet: str  # the dwt stage's wavelet, to turn its coefficients back into pixels
    levels: int = 4
    image_height: int = 28
    image_width: int = 28

    family = "pixels"
    bit_planes = False

    def __post_init__(self):
        if not 2 <= self.levels <= 256:
            raise ValueError(f"pixel levels {self.levels} is outside 2..256")

    @property
    def vocab_size(self) -> int:
        return self.levels

    @property
    def token_names(self) -> list[str]:
        return [f"level {k}" for k in range(self.levels)]

    @property
    def size(self) -> int:
        return max(self.image_height, self.image_width)

    @property
    def e0_range(self) -> tuple[int, int]:
        return 0, 0  # no initial exponent: every sequence starts alike

    @property
    def max_planes(self) -> int:
        return 1

    @property
    def length(self) -> int:
        return self.image_height * self.image_width

    @property
    def name(self) -> str:
        return f"pixels, {self.levels} levels"

    def describe(self) -> dict:
        return {"family": self.family, "wavelet": self.wavelet, "levels": self.levels,
                "image_height": self.image_height, "image_width": self.image_width}

    def quantise(self, images: np.ndarray) -> np.ndarray:
        return np.rint(images.astype(np.float64) * (self.levels - 1) / 255.0).astype(np.uint8)

    def _sequences(self, levels: np.ndarray) -> Encoded:
        n = len(levels)
        rows, cols = np.divmod(np.arange(self.length), self.image_width)
        return Encoded(levels.reshape(-1), np.zeros(n * self.length, np.uint8),
                       np.tile(rows, n).astype(np.uint8), np.tile(cols, n).astype(np.uint8),
                       np.arange(n + 1, dtype=np.int64) * self.length, np.zeros(n, np.int8))

    def encode(self, coeffs: np.ndarray) -> Encoded:
        pixels = wavelets.crop(wavelets.inverse(np.asarray(coeffs), self.wavelet), self.image_height, self.image_width)
        return self._sequences(self.quantise(wavelets.to_uint8(pixels)))

    def encode_images(self, images: np.ndarray) -> Encoded:
        return self._sequences(self.quantise(images))

    def _check(self, encoded: Encoded) -> None:
        lengths = encoded.lengths
        if (lengths > self.length).any():
            j = int(np.flatnonzero(lengths > self.length)[0])
            raise ValueError(f"sequence {j}: {lengths[j]} tokens, more than the {self.length} pixels")
        tokens = np.asarray(encoded.tokens)
        if tokens.size and tokens.max() >= self.levels:
            where = int(np.argmax(tokens >= self.levels))
            j = int(np.searchsorted(encoded.offsets, where, side="right") - 1)
            raise ValueError(f"sequence {j}: token {where - encoded.offsets[j]} is {tokens[where]}, "
                             f"not a level 0..{self.levels - 1}")

    def decode(self, encoded: Encoded) -> np.ndarray:
        """Sequences (a prefix leaves the rest of the image black) -> (N, H, W) uint8."""
        self._check(encoded)
        levels = np.zeros((len(encoded), self.length), np.float64)
        for j in range(len(encoded)):
            seq = encoded.tokens[encoded.offsets[j]:encoded.offsets[j + 1]]
            levels[j, :len(seq)] = seq
        images = np.rint(levels * 255.0 / (self.levels - 1)).astype(np.uint8)
        return images.reshape(len(encoded), self.image_height, self.image_width)

    def progressive(self, encoded: Encoded, j: int) -> tuple[np.ndarray, list[str], np.ndarray]:
        """Sequence j after each quarter of its rows."""
        quarter = -(-self.image_height // 4)
        seq = encoded.select([j])
        stages = []
        for stage in range(4):
            prefix = min(self.length, (stage + 1) * quarter * self.image_width)
            cut = Encoded(seq.tokens[:prefix], seq.bp[:prefix], seq.i1[:prefix], seq.i2[:prefix],
                          np.array([0, min(prefix, seq.lengths[0])]), seq.initial_exponents)
            stages.append(self.decode(cut)[0] / 255.0)
        names = [f"rows < {min(self.image_height, (stage + 1) * quarter)}" for stage in range(4)]
        return np.stack(stages), names, np.asarray(seq.i1) // quarter

    def check(self, encoded: Encoded) -> None:
        """Lengths, ids and positions: every sequence is the whole raster scan."""
        self._check(encoded)
        short = np.flatnonzero(encoded.lengths != self.length)
        if len(short):
            raise ValueError(f"sequence {short[0]}: it ends after {encoded.lengths[short[0]]} tokens, "
                             f"not {self.length}")
        expected = self._sequences(np.zeros((len(encoded), self.length), np.uint8))
        for name in ("bp", "i1", "i2"):
            wrong = np.flatnonzero(np.asarray(getattr(encoded, name)) != getattr(expected, name))
            if len(wrong):
                j, index = divmod(int(wrong[0]), self.length)
                raise ValueError(f"sequence {j}: token {index} has position {name}="
                                 f"{getattr(encoded, name)[wrong[0]]}, not the raster scan's")

    def valid_ids(self, encoded: Encoded) -> np.ndarray:
        """Every id is valid everywhere."""
        self.check(encoded)
        return np.ones((len(encoded.tokens), self.levels), bool)

    def scan(self, initial_exponents) -> PixelScan:
        return PixelScan(self, len(np.atleast_1d(initial_exponents)))

    def artifacts(self) -> dict[str, str]:
        return {}


@dataclass(frozen=True)
class BPELanguage:
    """The wavelet language `base` with byte-pair merges: `tokenizer` is the learned HuggingFace
    tokenizer (JSON) whose ids 0..7 are the base ids and whose other ids stand for runs of them.
    A merged token sits where its first base token does; the grammar judges its whole expansion."""

    base: WaveletLanguage
    tokenizer: str

    family = "bpe"
    bit_planes = True

    @cached_property
    def vocabulary(self) -> bpe.Vocabulary:
        return bpe.Vocabulary.of(self.tokenizer)

    @cached_property
    def _tokenizer(self) -> bpe.Tokenizer:
        return bpe.Tokenizer.from_str(self.tokenizer)

    @property
    def vocab_size(self) -> int:
        return self.vocabulary.size

    @property
    def token_names(self) -> list[str]:
        v = self.vocabulary
        return self.base.token_names + [
            "+".join(str(t) for t in v.expansion[v.expansion_offsets[i]:v.expansion_offsets[i + 1]])
            for i in range(grammar.VOCAB_SIZE, v.size)]

    wavelet = property(lambda self: self.base.wavelet)
    size = property(lambda self: self.base.size)
    e0_range = property(lambda self: self.base.e0_range)
    max_planes = property(lambda self: self.base.max_planes)
    image_height = property(lambda self: self.base.image_height)
    image_width = property(lambda self: self.base.image_width)

    @property
    def name(self) -> str:
        return f"{self.base.name}, BPE {self.vocab_size}"

    def describe(self) -> dict:
        return {"family": self.family, "base": self.base.describe(), "tokenizer": json.loads(self.tokenizer)}

    @classmethod
    def learn(cls, base: WaveletLanguage, coeffs: np.ndarray, vocab_size: int) -> "BPELanguage":
        """Merges learned on the base sequences of (N, M, M) DWT coefficient matrices."""
        encoded = base.encode(coeffs)
        return cls(base, bpe.learn(bpe.to_strings(encoded.tokens, encoded.offsets), vocab_size))

    # ----- images <-> sequences -----

    def merge(self, encoded: Encoded) -> Encoded:
        """Base sequences -> the tokenizer's merged sequences (positions of each first base token)."""
        merged = self._tokenizer.encode_batch(bpe.to_strings(encoded.tokens, encoded.offsets))
        ids = [np.asarray(m.ids, np.int64) for m in merged]
        lengths = np.array([len(i) for i in ids], np.int64)
        tokens = np.concatenate(ids) if ids else np.zeros(0, np.int64)
        offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
        # The expansions, concatenated, are the base tokens: a merged token's first base token is
        # the sum of the spans before it.
        spans = self.vocabulary.lengths[tokens]
        firsts = np.cumsum(spans) - spans
        return Encoded(tokens.astype(np.uint16), encoded.bp[firsts], encoded.i1[firsts], encoded.i2[firsts],
                       offsets, encoded.initial_exponents)

    def expand(self, encoded: Encoded) -> Encoded:
        """Merged sequences (or prefixes) -> base sequences; positions are the base scan's."""
        tokens = np.asarray(encoded.tokens, np.int64)
        if tokens.size and (tokens.min() < 0 or tokens.max() >= self.vocab_size):
            bad = int(np.flatnonzero((tokens < 0) | (tokens >= self.vocab_size))[0])
            raise ValueError(f"token {tokens[bad]} at index {bad} is not an id of the vocabulary (0..{self.vocab_size - 1})")
        v = self.vocabulary
        spans = v.lengths[tokens]
        flat = np.repeat(v.expansion_offsets[tokens] - np.cumsum(spans) + spans, spans) + np.arange(spans.sum())
        per_sequence = np.bincount(np.repeat(np.arange(len(encoded)), encoded.lengths), weights=spans,
                                   minlength=len(encoded)).astype(np.int64)
        base_tokens = v.expansion[flat].astype(np.uint8)
        offsets = np.concatenate([[0], np.cumsum(per_sequence)]).astype(np.int64)
        positions = bpe.base_positions(base_tokens, offsets, encoded.initial_exponents, self.base.grammar)
        return Encoded(base_tokens, *positions, offsets, encoded.initial_exponents)

    def encode(self, coeffs: np.ndarray) -> Encoded:
        return self.merge(self.base.encode(coeffs))

    def encode_images(self, images: np.ndarray) -> Encoded:
        return self.merge(self.base.encode_images(images))

    def decode(self, encoded: Encoded) -> np.ndarray:
        """Merges expanded first; every prefix decodes (it expands to a prefix of the base)."""
        return self.base.decode(self.expand(encoded))

    def progressive(self, encoded: Encoded, j: int) -> tuple[np.ndarray, list[str], np.ndarray]:
        images, names, _ = self.base.progressive(self.expand(encoded.select([j])), 0)
        return images, names, encoded.bp[encoded.offsets[j]:encoded.offsets[j + 1]]

    # ----- the grammar, for training and sampling -----

    def _sequences(self, encoded: Encoded, with_valid: bool) -> np.ndarray:
        return bpe.check_sequences(encoded.tokens, encoded.offsets, encoded.initial_exponents,
                                   (encoded.bp, encoded.i1, encoded.i2), self.base.grammar, self.vocabulary,
                                   with_valid)

    def check(self, encoded: Encoded) -> None:
        self._sequences(encoded, with_valid=False)

    def valid_ids(self, encoded: Encoded) -> np.ndarray:
        return self._sequences(encoded, with_valid=True)

    def scan(self, initial_exponents) -> bpe.BatchScan:
        return bpe.BatchScan(self.base.grammar, self.vocabulary, initial_exponents)

    def artifacts(self) -> dict[str, str]:
        """The tokenizer, loadable with `tokenizers.Tokenizer.from_file`."""
        return {"tokenizer.json": self.tokenizer}


LANGUAGES = {"wavelet": WaveletLanguage, "pixels": PixelLanguage, "bpe": BPELanguage}


def from_description(description: dict):
    """The language that `describe()` wrote (into meta.json or a model config)."""
    fields = dict(description)
    family = fields.pop("family", None)
    if family not in LANGUAGES:
        raise ValueError(f"language family {family!r} is not one of {', '.join(LANGUAGES)}")
    if family == "bpe":
        base = from_description(fields["base"])
        if not isinstance(base, WaveletLanguage):
            raise ValueError(f"BPE merges a wavelet language, not {base.name}")
        return BPELanguage(base, json.dumps(fields["tokenizer"]))
    return LANGUAGES[family](**fields)
