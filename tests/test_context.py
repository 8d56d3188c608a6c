"""Scan-state context features (`pipeline/languages/context.py`), checked against a slow,
independent path: each token's features recomputed from the decoded approximation of its prefix
(the coefficient matrix the decoder holds before the token) and the token's own position, with
nothing of the kernel's scan state, tables or plane counter."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from pipeline import idx
from pipeline.languages import coder
from pipeline.languages.bpe import BPELanguage
from pipeline.languages.context import SIZES
from pipeline.languages.wavelet import WaveletLanguage
from pipeline.models.transformer.network import Decoder, WaveletGPT, WaveletGPTConfig
from pipeline.stages import dwt


def subband_bounds(row: int, col: int) -> tuple[range, range]:
    """The rows and columns of the subband holding (row, col) in a Mallat layout."""
    if row < 2 and col < 2:
        return range(0, 2), range(0, 2)
    level = 2 ** int(math.log2(max(row, col)))
    rows = range(0, level) if row < level else range(level, 2 * level)
    cols = range(0, level) if col < level else range(level, 2 * level)
    return rows, cols


def refinements(value: float) -> int:
    """Refinements an approximation has had: |a~| is the centre of an interval of width w inside
    [T_s, 2 T_s) (T_s: the threshold it became significant at), and each refinement halves w."""
    magnitude = abs(value)
    mantissa, exponent = math.frexp(magnitude)
    bits = int(mantissa * 2 ** 53)
    lowest = (bits & -bits).bit_length() - 1 + exponent - 53  # |a~| = odd * 2^lowest
    return (exponent - 1) - (lowest + 1)  # log2(T_s / w), w = 2^(lowest + 1)


def slow_features(approx: np.ndarray, row: int, col: int) -> list[int]:
    significant = approx != 0
    a = approx[row, col]
    state = 0 if a == 0 else 1 + 2 * min(refinements(a), 7) + (a < 0)
    parent = 0 if max(row, col) < 4 else 1 + int(significant[row // 2, col // 2])
    rows, cols = subband_bounds(row, col)

    def around(offsets):
        found = [approx[row + dr, col + dc] for dr, dc in offsets
                 if row + dr in rows and col + dc in cols and significant[row + dr, col + dc]]
        return len(found), int(np.clip(sum(np.sign(found)), -1, 1))

    (h, h_sign), (v, v_sign) = around([(0, -1), (0, 1)]), around([(-1, 0), (1, 0)])
    d, _ = around([(-1, -1), (-1, 1), (1, -1), (1, 1)])
    return [state, parent, h * 15 + v * 5 + d, (h_sign + 1) * 3 + v_sign + 1]


@pytest.fixture(scope="module")
def coefficients(mnist_raw) -> np.ndarray:
    images, _ = idx.load_split(mnist_raw, "test")
    return dwt.transform(images[:12], "haar")[0]


@pytest.mark.parametrize("method,final_exponent", [("zerotree", -1), ("zeroblock", -1), ("zerotree", -3)])
def test_features_equal_the_slow_path_from_each_prefix_decoded(coefficients, method, final_exponent):
    language = WaveletLanguage("haar", method, final_exponent)
    encoded = language.encode(coefficients)
    features = language.context(encoded)
    seen = np.zeros((len(SIZES), max(SIZES)), bool)
    for j in range(len(encoded)):
        part = slice(encoded.offsets[j], encoded.offsets[j + 1])
        tokens, e0 = encoded.tokens[part], int(encoded.initial_exponents[j])
        for i, (row, col) in enumerate(zip(encoded.i1[part], encoded.i2[part])):
            approx = coder.decode(tokens[:i], e0, language.grammar)
            expected = slow_features(approx, int(row), int(col))
            assert features[part][i].tolist() == expected, f"sequence {j}, token {i} at ({row}, {col})"
            seen[np.arange(len(SIZES)), expected] = True
    # The comparison covered every kind of value, not only the blank start of each sequence.
    assert seen[0, :5].all() and seen[1, :3].all() and seen[3, [0, 2, 6, 8]].all()
    assert seen[2].sum() >= 12
    if final_exponent == -3:
        assert seen[0, 5:9].all()  # two and three refinements


def test_sampling_reads_the_features_training_reads(coefficients):
    """A scan stepped through encoded sequences gives, at each step, the features the training
    path computes for the token written there; so does a BPE scan for its merged tokens, which
    take their first base token's features."""
    base = WaveletLanguage("haar", "zerotree", -2)
    bpe = BPELanguage.learn(base, coefficients, 64)
    for language in (base, bpe):
        encoded = language.encode(coefficients[:4])
        expected = language.context(encoded)
        scan = language.scan(encoded.initial_exponents.astype(np.int64))
        length = int(encoded.lengths.max())
        for t in range(length):
            features = language.scan_context(scan)
            live = t < encoded.lengths
            at = encoded.offsets[:-1] + t
            assert (features[live] == expected[at[live]]).all(), f"{language.name}, step {t}"
            assert (features[~live] == 0).all()
            scan.step(np.where(live, encoded.tokens[np.minimum(at, len(encoded.tokens) - 1)], 0))
    merged = bpe.encode(coefficients[:4])
    spans = bpe.vocabulary.lengths[merged.tokens.astype(np.int64)]
    assert (spans > 1).any()  # merged tokens exist, so "first base token" was exercised
    assert (bpe.context(merged) == base.context(bpe.expand(merged))[np.cumsum(spans) - spans]).all()


def context_model() -> WaveletGPT:
    config = WaveletGPTConfig.for_language(WaveletLanguage("haar", "zerotree", -1), n_layer=2, n_embd=16, n_head=2,
                                           n_positions=1, context="scan", attn_implementation="sdpa")
    torch.manual_seed(0)
    return WaveletGPT(config).eval()


def test_each_context_feature_is_embedded_from_its_own_column():
    model = context_model()
    for table in model.scan_context:
        torch.nn.init.zeros_(table.weight)
    for j, table in enumerate(model.scan_context):
        table.weight.data[:, j] = torch.arange(table.num_embeddings, dtype=torch.float32)
    zeros = torch.zeros(1, 3, dtype=torch.long)
    context = torch.tensor([[[3, 1, 40, 7], [0, 2, 5, 4], [16, 0, 44, 8]]])
    without = model.embed(zeros, zeros, zeros, zeros, torch.tensor([1]), torch.tensor([0]), torch.zeros_like(context))
    with_context = model.embed(zeros, zeros, zeros, zeros, torch.tensor([1]), torch.tensor([0]), context)
    torch.testing.assert_close((with_context - without)[..., :4], context.float(), atol=1e-5, rtol=0)


def test_decoder_with_context_equals_the_forward():
    model = context_model()
    generator = torch.Generator().manual_seed(1)
    shape = (2, 7)
    prev, bp, i1, i2 = (torch.randint(0, 5, shape, generator=generator) for _ in range(4))
    context = torch.stack([torch.randint(0, n, shape, generator=generator) for n in SIZES], -1)
    e0, labels = torch.tensor([1, 2]), torch.tensor([3, 10])
    full = model(prev, bp, i1, i2, e0, labels, context)
    assert not torch.allclose(model(prev, bp, i1, i2, e0, labels, context.flip(-1) % 3), full, atol=1e-4)
    decoder = Decoder(model, 2, capacity=4)
    decoder.prefill(torch.arange(2), prev[:, :3], bp[:, :3], i1[:, :3], i2[:, :3], e0, labels, np.array([3, 3]),
                    context[:, :3])
    stepped = [decoder.step(prev[:, t], bp[:, t], i1[:, t], i2[:, t], e0, labels, context[:, t]) for t in range(3, 7)]
    torch.testing.assert_close(torch.stack(stepped, 1), full[:, 3:], atol=1e-5, rtol=1e-5)


def test_context_needs_a_language_with_a_scan_state():
    from pipeline.languages.pixels import PixelLanguage

    with pytest.raises(ValueError, match="model.context scan needs a language with a scan state"):
        WaveletGPTConfig.for_language(PixelLanguage("haar", 4), context="scan")
