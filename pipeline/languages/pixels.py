"""The pixel language (the baseline without wavelets): raster-order intensities quantised to a
few levels, every id valid everywhere, every sequence height x width long."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .. import wavelets
from .encoded import Encoded


class PixelScan:
    """A batch of raster scans over height x width pixels: the trivial grammar of the pixel
    language (the same interface as grammar.BatchScan)."""

    def __init__(self, language: "PixelLanguage", batch: int):
        self.language = language
        self.position = np.zeros(batch, np.int64)
        self.bp = np.zeros(batch, np.int64)
        self._observe()

    def _observe(self) -> None:
        width, channels = self.language.image_width, self.language.channels
        self.done = self.position >= self.language.length
        pixel, channel = np.divmod(self.position, channels)
        self.i1 = np.where(self.done, 0, pixel // width)
        self.i2 = np.where(self.done, 0, pixel % width)
        self.component = np.where(self.done, 0, channel)

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
    included): the same transformer without the wavelet language. Colour: R, G and B of each pixel
    in turn (channel-interleaved raster order), `levels` per channel; a token's component is its
    channel. It reads the dwt stage's coefficients back to pixels, so with `dwt.chroma: half` it
    models the images as dwt keeps them (chroma averaged over 2 x 2 pixels), as the wavelet
    language does."""

    wavelet: str  # the dwt stage's wavelet, to turn its coefficients back into pixels
    levels: int = 4
    image_height: int = 28
    image_width: int = 28
    chroma: str | None = None  # None: grey; "full" or "half": RGB, read from dwt's luma and chroma

    family = "pixels"
    bit_planes = False
    has_context = False  # no scan state to read context features from

    def __post_init__(self):
        if not 2 <= self.levels <= 256:
            raise ValueError(f"pixel levels {self.levels} is outside 2..256")
        wavelets.check_chroma(self.chroma)

    @property
    def colour(self) -> bool:
        return self.chroma is not None

    @property
    def channels(self) -> int:
        return 3 if self.colour else 1

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
        return self.image_height * self.image_width * self.channels

    @property
    def name(self) -> str:
        return f"pixels, {self.levels} levels" + (" per RGB channel" if self.colour else "")

    def describe(self) -> dict:
        description = {"family": self.family, "wavelet": self.wavelet, "levels": self.levels,
                       "image_height": self.image_height, "image_width": self.image_width}
        if self.colour:  # a grey language's description (meta.json) stays as it was
            description["chroma"] = self.chroma
        return description

    def quantise(self, images: np.ndarray) -> np.ndarray:
        return np.rint(images.astype(np.float64) * (self.levels - 1) / 255.0).astype(np.uint8)

    def _sequences(self, levels: np.ndarray) -> Encoded:
        """(N, H, W) or (N, H, W, 3) levels -> raster sequences (channels innermost)."""
        n = len(levels)
        pixel, channel = np.divmod(np.arange(self.length), self.channels)
        rows, cols = np.divmod(pixel, self.image_width)
        return Encoded(levels.reshape(-1), np.zeros(n * self.length, np.uint8),
                       np.tile(rows, n).astype(np.uint8), np.tile(cols, n).astype(np.uint8),
                       np.arange(n + 1, dtype=np.int64) * self.length, np.zeros(n, np.int8),
                       np.tile(channel, n).astype(np.uint8))

    def encode(self, coeffs) -> Encoded:
        """The dwt stage's coefficients (colour: the pair luma, chroma) -> sequences."""
        if self.colour:
            pixels = wavelets.colour_pixels(*coeffs, self.wavelet, self.image_height, self.image_width,
                                            self.chroma == "half")
        else:
            pixels = wavelets.crop(wavelets.inverse(np.asarray(coeffs), self.wavelet), self.image_height,
                                   self.image_width)
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
        """Sequences (a prefix leaves the rest of the image black) -> (N, H, W) uint8 (colour:
        (N, H, W, 3))."""
        self._check(encoded)
        levels = np.zeros((len(encoded), self.length), np.float64)
        for j in range(len(encoded)):
            seq = encoded.tokens[encoded.offsets[j]:encoded.offsets[j + 1]]
            levels[j, :len(seq)] = seq
        images = np.rint(levels * 255.0 / (self.levels - 1)).astype(np.uint8)
        return images.reshape(len(encoded), self.image_height, self.image_width, *[3] * self.colour)

    def progressive(self, encoded: Encoded, j: int) -> tuple[np.ndarray, list[str], np.ndarray]:
        """Sequence j after each quarter of its rows."""
        quarter = -(-self.image_height // 4)
        seq = encoded.select([j])
        stages = []
        for stage in range(4):
            prefix = min(self.length, (stage + 1) * quarter * self.image_width * self.channels)
            cut = Encoded(seq.tokens[:prefix], seq.bp[:prefix], seq.i1[:prefix], seq.i2[:prefix],
                          np.array([0, min(prefix, seq.lengths[0])]), seq.initial_exponents, seq.component[:prefix])
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
        for name in ("bp", "i1", "i2", "component"):
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
