"""Sequences of any token language, stored flat: the container every stage passes around."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass
class Encoded:
    """A batch of sequences, stored flat: sequence j is `tokens[offsets[j]:offsets[j + 1]]`."""

    tokens: np.ndarray  # uint8 token ids
    bp: np.ndarray  # uint8 bit-plane of each token
    i1: np.ndarray  # uint8 row of each token's coefficient (or group corner)
    i2: np.ndarray  # uint8 column
    offsets: np.ndarray  # int64, N + 1
    initial_exponents: np.ndarray  # int8 e0 per sequence
    component: np.ndarray | None = None  # uint8 component of each token (colour: 0 Y, 1 Cb, 2 Cr); None: all 0

    def __post_init__(self):
        if self.component is None:
            self.component = np.zeros(len(self.tokens), np.uint8)

    def __len__(self) -> int:
        return len(self.offsets) - 1

    @property
    def lengths(self) -> np.ndarray:
        return np.diff(self.offsets)

    def sequence(self, j: int) -> np.ndarray:
        return self.tokens[self.offsets[j]:self.offsets[j + 1]]

    def select(self, rows) -> "Encoded":
        """The sequences at `rows`, in that order."""
        rows = np.asarray(rows, dtype=np.int64)
        lengths = self.lengths[rows]
        offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
        flat = np.repeat(self.offsets[rows] - offsets[:-1], lengths) + np.arange(offsets[-1])
        return Encoded(self.tokens[flat], self.bp[flat], self.i1[flat], self.i2[flat], offsets,
                       self.initial_exponents[rows], self.component[flat])
