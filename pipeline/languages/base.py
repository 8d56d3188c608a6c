"""Token languages: what the stages drive to turn images into sequences and back.

A language says how an image becomes a sequence of ids (encode), how a sequence becomes an image
again (decode; any prefix decodes), where each token sits (bp, i1, i2), and which ids are valid
at each step: per token of given sequences for training masks (`valid_ids`, `check`) and as a
batch of scan states for sampling (`scan`). The tokenize, train, sample and evaluate stages use
only this interface (`TokenLanguage`); `describe()` is what meta.json and the model's config
record, `from_description` rebuilds the language from it, and `artifacts()` are the files
written beside the shards and the model for other tools.

Every language reads what the dwt stage writes (DWT coefficient matrices, an exact
representation of the images) and decodes to uint8 images:
- the wavelet language (`wavelet`, the paper's): the scan grammar of `grammar` and the coder of
  `coder`;
- the BPE language (`bpe`, paper 3.2.3): the wavelet language with byte-pair merges of its ids,
  so fewer, richer tokens per image;
- the pixel language (`pixels`, the baseline without wavelets): raster-order intensities
  quantised to a few levels, every id valid everywhere, every sequence height x width long.

The wavelet and BPE languages also give the model context features read off their scan state
(`context`: what the decoder already knows where the next token is written).
"""
from __future__ import annotations

import json
from typing import Protocol

import numpy as np

from .bpe import BPELanguage
from .encoded import Encoded
from .pixels import PixelLanguage
from .wavelet import WaveletLanguage


class Scan(Protocol):
    """A batch of scan states (one row per sequence being written): where each row's next token
    sits and which ids are valid there."""

    bp: np.ndarray
    i1: np.ndarray
    i2: np.ndarray
    component: np.ndarray
    done: np.ndarray

    def valid(self) -> np.ndarray: ...  # (rows, vocab_size) bool
    def step(self, tokens) -> None: ...  # one token per row
    def restart(self, rows, initial_exponents) -> None: ...
    def advance(self, row: int, tokens) -> None: ...  # a prefix for one row
    def keep(self, rows) -> None: ...


class TokenLanguage(Protocol):
    """The one interface every token language implements and every stage drives."""

    family: str
    bit_planes: bool  # sequences run coarse to fine, plane by plane (completion keeps the first k)
    has_context: bool  # its scan state gives context features: it has `context` and `scan_context`
    colour: bool  # RGB images: tokens carry a component (0 Y, 1 Cb, 2 Cr), images decode to (N, H, W, 3)
    chroma: str | None  # colour: how the dwt stage kept the chroma (full, half); None for grey
    wavelet: str
    vocab_size: int
    token_names: list[str]
    size: int  # positions i1, i2 lie in 0..size-1
    e0_range: tuple[int, int]
    max_planes: int
    image_height: int
    image_width: int
    name: str

    def describe(self) -> dict: ...
    def encode(self, coeffs: np.ndarray) -> Encoded: ...
    def encode_images(self, images: np.ndarray) -> Encoded: ...
    def decode(self, encoded: Encoded) -> np.ndarray: ...
    def progressive(self, encoded: Encoded, j: int) -> tuple[np.ndarray, list[str], np.ndarray]: ...
    def check(self, encoded: Encoded) -> None: ...
    def valid_ids(self, encoded: Encoded) -> np.ndarray: ...
    def scan(self, initial_exponents) -> Scan: ...
    # Where has_context: (tokens, 4) features in front of each token, (rows, 4) of each row's next
    # token (`languages.context`).
    def context(self, encoded: Encoded) -> np.ndarray: ...
    def scan_context(self, scan: Scan) -> np.ndarray: ...
    def artifacts(self) -> dict[str, str]: ...


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
