"""Per-level final exponents: `final_exponent` as one value per decomposition level, coarse to fine
and non-decreasing (an extension of the tokenizer contract; one int is the contract's case)."""
from __future__ import annotations

import json

import numpy as np
import pytest

from pipeline import idx, params
from pipeline.languages import coder, grammar
from pipeline.languages.base import from_description
from pipeline.languages.bpe import BPELanguage
from pipeline.languages.grammar import (
    GROUP2X2,
    GROUP4X4,
    INSIGNIFICANT,
    NEXT_ACCURACY0,
    NOW_SIGNIFICANT_POS,
    ZERO_TREE,
    Language,
)
from pipeline.languages.wavelet import WaveletLanguage
from pipeline.stages import dwt

PER_LEVEL = (-3, -2, -2, -1)
# Two planes for a spike of 1 (e0 = 1): threshold 1 visits every level, threshold 1/2 all but the
# finest (level 3: the 16 x 16 details).
FINEST_STOPS_EARLY = (-1, -1, -1, 0)


@pytest.fixture(scope="module")
def test_coeffs(mnist_raw) -> np.ndarray:
    images, _ = idx.load_split(mnist_raw, "test")
    return dwt.transform(images[:1000], "haar")[0]


@pytest.fixture(scope="module")
def train_coeffs(mnist_raw) -> np.ndarray:
    images, _ = idx.load_split(mnist_raw, "train")
    return dwt.transform(images[:1000], "haar")[0]


def final_exponent_matrix(language: Language) -> np.ndarray:
    """(M, M): the final exponent of each coefficient's level."""
    return grammar.scan_to_matrix(language.final_exponents[language.level][None].astype(np.float64), language)[0]


def _by_plane(encoded, j: int = 0) -> list[list[int]]:
    seq = slice(encoded.offsets[j], encoded.offsets[j + 1])
    tokens, bp = encoded.tokens[seq], encoded.bp[seq]
    return [tokens[bp == b].tolist() for b in range(bp.max() + 1)]


def _spikes(*where: tuple[int, int], value: float = 1.0) -> np.ndarray:
    a = np.zeros((32, 32))
    for r, c in where:
        a[r, c] = value
    return a


# ----- real images -----

@pytest.mark.parametrize("method", ["zeroblock", "zerotree"])
def test_real_images_round_trip_within_each_levels_final_exponent(test_coeffs, method):
    language = Language(32, method, PER_LEVEL)
    encoded, approx = coder.encode(test_coeffs, language, return_approximation=True)
    decoded = coder.decode_batch(encoded.tokens, encoded.offsets, encoded.initial_exponents, language)
    assert np.array_equal(decoded, approx), "encoder and decoder approximations differ"
    f = np.broadcast_to(final_exponent_matrix(language), test_coeffs.shape)
    error = np.abs(test_coeffs - decoded)
    assert (error < 2.0**f).all()
    eligible = np.abs(test_coeffs) >= 2.0**f
    assert (error[eligible] <= 2.0 ** (f[eligible] - 1)).all()
    # A coefficient is uncovered exactly when it reaches its own level's last threshold: a plane
    # that visited a level past its final exponent would uncover some below it.
    assert np.array_equal(decoded != 0, eligible)
    # The encoder's sequences are canonical, positions included, and re-encode to themselves.
    grammar.sequence_masks(encoded.tokens, encoded.offsets, encoded.initial_exponents, language,
                           (encoded.bp, encoded.i1, encoded.i2))
    again = coder.encode(decoded, language)
    assert np.array_equal(again.tokens, encoded.tokens) and np.array_equal(again.offsets, encoded.offsets)


@pytest.mark.parametrize("method", ["zeroblock", "zerotree"])
def test_the_sampler_scan_follows_the_encoders_positions(test_coeffs, method):
    language = Language(32, method, PER_LEVEL)
    encoded = coder.encode(test_coeffs[:6], language)
    scan = grammar.BatchScan(language, encoded.initial_exponents)
    for i in range(encoded.lengths.max()):
        live = np.flatnonzero(~scan.done)
        assert np.array_equal(live, np.flatnonzero(encoded.lengths > i))
        where = encoded.offsets[live] + i
        assert np.array_equal(scan.bp[live], encoded.bp[where])
        assert np.array_equal(scan.i1[live], encoded.i1[where]) and np.array_equal(scan.i2[live], encoded.i2[where])
        assert scan.valid()[live, encoded.tokens[where]].all()
        tokens = np.zeros(len(scan.done), np.int64)
        tokens[live] = encoded.tokens[where]
        scan.step(tokens)
    assert scan.done.all()
    assert np.array_equal(scan.approximations(), coder.decode_batch(encoded.tokens, encoded.offsets,
                                                                    encoded.initial_exponents, language))


@pytest.mark.parametrize("method", ["zeroblock", "zerotree"])
@pytest.mark.parametrize("f", [-2, -3])
def test_a_list_of_equal_values_is_the_int(test_coeffs, method, f):
    one, per_level = Language(32, method, f), Language(32, method, [f] * 4)
    assert per_level.final_exponent == (f,) * 4
    a, b = coder.encode(test_coeffs[:300], one), coder.encode(test_coeffs[:300], per_level)
    for name in ("tokens", "bp", "i1", "i2", "offsets", "initial_exponents"):
        assert np.array_equal(getattr(a, name), getattr(b, name)), name
    masks = [grammar.sequence_masks(a.tokens, a.offsets, a.initial_exponents, language) for language in (one, per_level)]
    assert np.array_equal(*masks)


def test_bpe_masks_are_the_ids_whose_expansion_the_per_level_grammar_accepts(train_coeffs, test_coeffs):
    language = BPELanguage.learn(WaveletLanguage("haar", "zerotree", PER_LEVEL), train_coeffs, 64)
    base, merged = language.base.encode(test_coeffs[:20]), language.encode(test_coeffs[:20])
    expanded = language.expand(merged)
    for name in ("tokens", "bp", "i1", "i2", "offsets", "initial_exponents"):
        assert np.array_equal(getattr(expanded, name), getattr(base, name)), name
    valid = language.valid_ids(merged)
    v = language.vocabulary
    sequence, e0 = base.sequence(0).astype(np.int64), int(base.initial_exponents[0])
    spans = np.concatenate([[0], np.cumsum(v.lengths[merged.sequence(0).astype(np.int64)])])
    # Id by id, in front of the merged tokens that hold a plane's last base token (where an
    # expansion may run into the next plane): valid iff the base scan takes the whole expansion.
    plane_ends = np.flatnonzero(np.diff(base.bp[:len(sequence)]))
    for i in np.searchsorted(spans, plane_ends, side="right") - 1:
        for token in range(v.size):
            scan = grammar.BatchScan(language.base.grammar, [e0])
            scan.advance(0, sequence[:spans[i]])
            try:
                scan.advance(0, v.expansion[v.expansion_offsets[token]:v.expansion_offsets[token + 1]])
            except ValueError:
                assert not valid[i, token]
            else:
                assert valid[i, token]


# ----- hand-checked sequences -----

def test_a_plane_ends_after_the_last_level_it_visits():
    language = Language(32, "zeroblock", FINEST_STOPS_EARLY)
    encoded, approx = coder.encode(_spikes((0, 0)), language, return_approximation=True)
    plane0, plane1 = _by_plane(encoded)
    # Plane 0 (threshold 1) visits all four levels: 3 + 12 + 48 intact blocks after the 2 x 2 groups.
    assert plane0 == [NOW_SIGNIFICANT_POS] + [INSIGNIFICANT] * 3 + [GROUP2X2] * 3 + [GROUP4X4] * (3 + 12 + 48)
    # Plane 1 (threshold 1/2) stops after level 2: no block of the 16 x 16 details.
    assert plane1 == [NEXT_ACCURACY0] + [INSIGNIFICANT] * 3 + [GROUP2X2] * 3 + [GROUP4X4] * (3 + 12)
    assert (encoded.i1[-1], encoded.i2[-1]) == (12, 12)  # the last 4 x 4 block of level 2
    assert approx[0, 0, 0] == 1.25


def test_a_zero_tree_covers_only_the_levels_its_plane_visits():
    # (2, 0) -> (4, 0) -> (8, 0), (8, 1), (9, 0), (9, 1): level 0, 1, 2 of one tree.
    language = Language(32, "zerotree", FINEST_STOPS_EARLY)
    encoded = coder.encode(_spikes((2, 0), (4, 0)), language)
    plane0, plane1 = _by_plane(encoded)
    zt, ins = ZERO_TREE, INSIGNIFICANT
    # Plane 0: (4, 0)'s children root subtrees that reach level 3, so they are zero trees.
    assert plane0 == [ins] * 4 + [zt] * 4 + [NOW_SIGNIFICANT_POS] + [zt] * 7 + [NOW_SIGNIFICANT_POS] + [zt] * 3 + [zt] * 4
    # Plane 1 does not visit level 3: those children are leaves now, so plain coefficients.
    assert plane1 == [ins] * 4 + [zt] * 4 + [NEXT_ACCURACY0] + [zt] * 7 + [NEXT_ACCURACY0] + [zt] * 3 + [ins] * 4
    grammar.sequence_masks(encoded.tokens, encoded.offsets, encoded.initial_exponents, language)


def test_a_zero_tree_root_ignores_significant_descendants_its_plane_does_not_visit():
    # (16, 0) is the level-3 descendant of (8, 0), (4, 0) and (2, 0).
    language = Language(32, "zerotree", FINEST_STOPS_EARLY)
    encoded, approx = coder.encode(_spikes((16, 0)), language, return_approximation=True)
    plane0, plane1 = _by_plane(encoded)
    zt, ins = ZERO_TREE, INSIGNIFICANT
    assert plane0 == [ins] * 4 + [zt] * 4 + [ins] + [zt] * 7 + [ins] + [zt] * 3 + [ins] + [zt] * 3 + \
        [NOW_SIGNIFICANT_POS] + [ins] * 3
    # Plane 1: what it visits of (2, 0)'s tree is all insignificant, so it is one zero tree.
    assert plane1 == [ins] * 4 + [zt] * 12
    assert approx[0, 16, 0] == 1.5
    grammar.sequence_masks(encoded.tokens, encoded.offsets, encoded.initial_exponents, language)


@pytest.mark.parametrize("method", ["zeroblock", "zerotree"])
def test_plane_0_must_uncover_among_the_levels_it_visits(method):
    # e0 = -1: plane 0 (threshold 2^-2) visits levels 0..2, not level 3 (f = -1).
    language = Language(32, method, PER_LEVEL)
    scan = grammar.BatchScan(language, [-1])
    preference = [ZERO_TREE, GROUP4X4, GROUP2X2, INSIGNIFICANT, NOW_SIGNIFICANT_POS]
    tokens = []
    while scan.bp[0] == 0:  # uncover as late as the canonical form allows
        position = (scan.i1[0], scan.i2[0])
        tokens.append(next(t for t in preference if scan.valid()[0, t]))
        scan.step(tokens[-1:])
    assert tokens.count(NOW_SIGNIFICANT_POS) == 1 and tokens[-1] == NOW_SIGNIFICANT_POS
    assert position == (15, 15)  # the last coefficient of level 2: the obligation ends with the plane


@pytest.mark.parametrize("method", ["zeroblock", "zerotree"])
def test_e0_comes_from_the_coefficients_that_can_become_significant(method):
    language = Language(32, method, (-4, -4, -4, -1))
    a = np.zeros((2, 32, 32))
    a[:, 16, 0] = 0.4  # level 3 stops at 2^-1: never significant, so it cannot set e0 (-1)
    a[0, 0, 0] = 0.2  # level 0: e0 = floor(log2 0.2) + 1 = -2
    encoded, approx = coder.encode(a, language, return_approximation=True)
    assert encoded.initial_exponents.tolist() == [-2, -3]  # the second: min f + 1, nothing to uncover
    assert approx[0, 0, 0] != 0 and not approx[:, 16, 0].any()
    grammar.sequence_masks(encoded.tokens, encoded.offsets, encoded.initial_exponents, language)


# ----- settings -----

@pytest.mark.parametrize("f,message", [
    ((-3, -2, -1), r"has 3 values; a 32 x 32 matrix has 4 decomposition levels"),
    ([-1, -2, -2, -3], r"\(-1, -2, -2, -3\) decreases"),
    ((-3, -2, -2, 5000), r"\(-3, -2, -2, 5000\) is outside -1099\.\.1023"),
    (5000, r"final exponent 5000 is outside -1099\.\.1023"),
])
def test_bad_final_exponents_are_named(f, message):
    with pytest.raises(ValueError, match=message):
        Language(32, "zerotree", f)


def test_per_level_languages_are_hashable_and_round_trip_their_description():
    language = WaveletLanguage("haar", "zerotree", [-3, -2, -2, -1])
    assert language == WaveletLanguage("haar", "zerotree", PER_LEVEL) and hash(language)
    assert language.name == "haar, zerotree, f=(-3,-2,-2,-1)"
    description = json.loads(json.dumps(language.describe()))  # as meta.json stores it
    assert description["final_exponent"] == [-3, -2, -2, -1]
    assert from_description(description) == language
    assert language.e0_range == (-2, 5) and language.max_planes == 8  # from min f = -3, as f = -3 would
    assert Language(32, "zerotree", [-3, -2, -2, -1]) == language.grammar


def test_params_take_one_value_per_level_of_the_padded_matrices():
    from pipeline.wavelets import Geometry

    for size in range(8, 257):
        assert params.decomposition_levels(size) == Geometry(size, size).levels == Language(Geometry(size, size).size).levels
    assert params.decomposition_levels(28) == 4 and params.decomposition_levels(32) == 4 and params.decomposition_levels(33) == 5
