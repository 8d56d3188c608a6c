"""Byte-pair merges over the wavelet language: learned on real MNIST sequences, checked against
the scan grammar (the only judge of validity)."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from pipeline import generation, params
from pipeline.languages import bpe, grammar
from pipeline.languages.base import from_description
from pipeline.languages.bpe import BPELanguage
from pipeline.languages.encoded import Encoded
from pipeline.languages.wavelet import WaveletLanguage
from pipeline.models.transformer.network import WaveletGPT, WaveletGPTConfig
from pipeline.models.transformer.sampler import draw_initial_exponents


@pytest.fixture(scope="module", params=[("zerotree", 256), ("zeroblock", 64)], ids=["zerotree-256", "zeroblock-64"])
def learned(request, mnist_train_coeffs) -> tuple[BPELanguage, np.ndarray]:
    """A BPE language learned on 3,000 MNIST training images (f = -1), and 200 other images."""
    method, vocab_size = request.param
    coeffs, _ = mnist_train_coeffs
    base = WaveletLanguage("haar", method, -1)
    return BPELanguage.learn(base, coeffs[:3000], vocab_size), coeffs[3000:3200]


def test_vocabulary_keeps_the_base_ids_and_round_trips(learned):
    language, _ = learned
    v = language.vocabulary
    assert v.size == language.vocab_size > grammar.VOCAB_SIZE
    assert [v.expansion[v.expansion_offsets[t]:v.expansion_offsets[t + 1]].tolist() for t in range(8)] == \
        [[t] for t in range(8)]
    assert v.lengths[8:].min() >= 2  # every other id is a merge
    assert from_description(language.describe()) == language
    assert language.token_names[:8] == list(grammar.TOKEN_NAMES)


def test_merged_sequences_decode_like_their_expansions(learned):
    language, coeffs = learned
    base = language.base.encode(coeffs)
    merged = language.encode(coeffs)
    assert merged.lengths.mean() < 0.5 * base.lengths.mean()  # the point of merging
    expanded = language.expand(merged)
    for name in ("tokens", "bp", "i1", "i2", "offsets", "initial_exponents"):
        assert np.array_equal(getattr(expanded, name), getattr(base, name)), name
    assert np.array_equal(language.decode(merged), language.base.decode(base))
    # A merged token sits where its first base token does.
    firsts = np.concatenate([[0], np.cumsum(language.vocabulary.lengths[merged.tokens.astype(np.int64)])[:-1]])
    j = 5
    seq = slice(merged.offsets[j], merged.offsets[j + 1])
    starts = firsts[seq] - firsts[merged.offsets[j]] + base.offsets[j]
    assert np.array_equal(merged.bp[seq], base.bp[starts]) and np.array_equal(merged.i2[seq], base.i2[starts])
    # Every prefix of a merged sequence decodes, to the image of the base prefix it expands to.
    rng = np.random.default_rng(0)
    for j in rng.choice(len(merged), 10, replace=False):
        one = merged.select([j])
        cut = int(rng.integers(1, len(one.tokens)))
        prefix = Encoded(one.tokens[:cut], one.bp[:cut], one.i1[:cut], one.i2[:cut], np.array([0, cut]),
                         one.initial_exponents)
        base_cut = int(language.vocabulary.lengths[one.tokens[:cut].astype(np.int64)].sum())
        base_one = base.select([j])
        base_prefix = Encoded(base_one.tokens[:base_cut], base_one.bp[:base_cut], base_one.i1[:base_cut],
                              base_one.i2[:base_cut], np.array([0, base_cut]), base_one.initial_exponents)
        assert np.array_equal(language.decode(prefix), language.base.decode(base_prefix))


def _accepts(language: BPELanguage, e0: int, prefix: np.ndarray, token: int) -> bool:
    """Whether the base grammar's own scan takes token's expansion after the base prefix."""
    scan = grammar.BatchScan(language.base.grammar, [e0])
    scan.advance(0, prefix)
    v = language.vocabulary
    try:
        scan.advance(0, v.expansion[v.expansion_offsets[token]:v.expansion_offsets[token + 1]])
    except ValueError:
        return False
    return True


def test_masks_are_exactly_the_ids_whose_expansion_the_grammar_accepts(learned):
    """At states along real sequences and along random valid walks, an id is marked valid iff the
    base grammar accepts its whole expansion from there: checked id by id, for all ids."""
    language, coeffs = learned
    merged = language.encode(coeffs[:3])
    valid = language.valid_ids(merged)
    rng = np.random.default_rng(1)
    checked = 0
    for j in range(len(merged)):
        base = language.expand(merged.select([j])).tokens.astype(np.int64)
        spans = np.concatenate([[0], np.cumsum(language.vocabulary.lengths[merged.sequence(j).astype(np.int64)])])
        for i in rng.choice(len(merged.sequence(j)), 4, replace=False):
            truth = [_accepts(language, int(merged.initial_exponents[j]), base[:spans[i]], t)
                     for t in range(language.vocab_size)]
            assert valid[merged.offsets[j] + i].tolist() == truth
            checked += 1
    # Off the data: states reached by a random walk of valid merged ids from a fresh scan.
    scan = language.scan(np.array([4]))
    walked = []
    for step in range(60):
        ids = np.flatnonzero(scan.valid()[0])
        if scan.done[0]:
            break
        if step % 15 == 7:
            truth = [_accepts(language, 4, np.array(walked, np.int64), t) for t in range(language.vocab_size)]
            assert scan.valid()[0].tolist() == truth
            checked += 1
        token = int(rng.choice(ids))
        v = language.vocabulary
        walked += v.expansion[v.expansion_offsets[token]:v.expansion_offsets[token + 1]].tolist()
        scan.step([token])
    assert checked >= 14


def test_training_masks_hold_every_target(learned):
    language, coeffs = learned
    merged = language.encode(coeffs[:20])
    valid = language.valid_ids(merged)
    assert valid[np.arange(len(merged.tokens)), merged.tokens.astype(np.int64)].all()
    assert 1 < valid.sum(axis=1).mean() < language.vocab_size
    broken = merged.select(range(3))
    broken.tokens[broken.offsets[1] + 2] = np.flatnonzero(~valid[merged.offsets[1] + 2])[0]
    with pytest.raises(ValueError, match="sequence 1: token 2 .*does not expand to a valid path"):
        language.check(broken)
    moved = merged.select(range(3))
    moved.i1[moved.offsets[2] + 4] += 1
    with pytest.raises(ValueError, match="sequence 2: token 4 has position"):
        language.check(moved)


def test_untrained_model_samples_are_valid_and_canonical(learned):
    """300 samples from an untrained model, which picks among the valid ids nearly at random,
    are all complete, grammar-valid and canonical (checked again by the base grammar)."""
    language, _ = learned
    torch.manual_seed(0)
    counts = {str(c): {"1": 1, "2": 2, "3": 3} for c in range(10)}
    model = WaveletGPT(WaveletGPTConfig.for_language(language, n_layer=1, n_embd=16, n_head=2, n_positions=1,
                                                     initial_exponent_counts=counts)).eval()
    labels = np.arange(300) % 10
    e0 = draw_initial_exponents(model, labels, np.random.default_rng(0))
    encoded = generation.generate(model, labels, e0, generation.Decoding(top_p=1.0, cfg_scale=1.0), seed=0,
                                    slots=100)
    language.check(encoded)  # merged ids valid at their states, positions the scan's, sequences complete
    expanded = language.expand(encoded)
    grammar.sequence_masks(expanded.tokens, expanded.offsets, expanded.initial_exponents, language.base.grammar,
                           (expanded.bp, expanded.i1, expanded.i2))  # canonical base sequences
    assert (encoded.tokens >= grammar.VOCAB_SIZE).mean() > 0.3  # merged ids were sampled
    assert language.decode(encoded).shape == (300, 28, 28)


def test_params_bounds_match_the_code():
    assert params.BPE_BASE_VOCAB == grammar.VOCAB_SIZE and params.BPE_MAX_VOCAB == bpe.MAX_VOCAB
    with pytest.raises(ValueError, match="BPE vocabulary size 8 is outside 9..65536"):
        bpe.learn(["0123"], 8)


def test_empty_sequences_and_prefixes_expand(learned):
    language, coeffs = learned
    merged = language.encode(coeffs[:2])
    one = merged.select([1])
    # sequence 0 empty, sequence 1 whole, sequence 2 empty (an empty prefix at the end)
    mixed = Encoded(one.tokens, one.bp, one.i1, one.i2, np.array([0, 0, len(one.tokens), len(one.tokens)]),
                    np.repeat(one.initial_exponents, 3))
    expanded = language.expand(mixed)
    assert expanded.lengths[[0, 2]].tolist() == [0, 0]
    assert np.array_equal(expanded.tokens, language.base.encode(coeffs[1:2]).tokens)
