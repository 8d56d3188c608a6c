"""The scan grammar of the wavelet language: where the next token sits, which ids are valid there,
and how a token moves the scan and the approximation (spec sections 3 to 7).

It is defined once, here, and driven by the encoder, the decoder, the training masks and the
sampler. The scan visits coefficients in a fixed order (`Language.order`); a scan state is a few
arrays indexed by that order plus some counters, so a batch of states is a batch of arrays and the
same steps can later be written as tensor gathers on a GPU.

Zero-block (3.2.1): the order lists LL, then per level (coarse to fine) the top-right, bottom-left
and bottom-right subbands; a unit of 4 x 4 or more is cut into 4 x 4 blocks in raster order, each
block into its 2 x 2 groups in raster order, each group into its coefficients in raster order. So
in scan order every 4 x 4 block is an aligned run of 16 (from index 16 on) and every group an
aligned run of 4, and a Group4x4 / Group2x2 token simply jumps the cursor 16 / 4 places.

Zero-tree (3.2.2): the same units, each in raster order; a ZeroTree token marks its subtree, and
the cursor skips marked descendants later in the same plane.

Per-level final exponents (an extension of the contract; one int f is the contract's case): the
final exponent may be one value per decomposition level, coarse to fine and non-decreasing, as
JPEG 2000 truncates each subband by its rate-distortion slope. Level 0 is LL and the coarsest
details (scan indices 0..15), level l the details of side 2^(l+1) (indices 4^(l+1)..4^(l+2)-1). A
plane of threshold 2^t visits only the levels with f <= t, which, as the scan runs coarse to fine,
is a prefix of the scan: the plane ends at its `limit`, and a zero-tree subtree counts only the
coefficients the plane visits (one row of subtree sizes per deepest visited level).

Colour (README, "The colour wavelet language", C1 to C8): the scan runs over components, Y then
Cb then Cr, each its own M_c x M_c matrix with its own final exponents; a plane visits, per
component, the prefix of its scan that the component's final exponents allow (the component's
`limit`), then moves on to the next component. The scan indices of all components are one run
(component c from its `start` to its `end`), so a batch of colour states is the same arrays as a
batch of grey ones; a grey language is the case of one component. Zero-trees and blocks stay
inside a component: parents, blocks and groups are laid out per component (each starts at a
multiple of 16).

Canonical form (section 6): what the encoder can emit. A block or group that dissolves, a root
that emits Insignificant instead of ZeroTree, and (per-image thresholds) plane 0 each oblige an
uncovering (NowSignificant) among the coefficients they hold (colour: plane 0's among those of
all components). The state counts, per open
obligation, the coefficients not yet covered; a token other than NowSignificant is refused when
it would cover the last of them.
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property
from typing import NamedTuple

import numpy as np
from numba import njit

# Token ids (spec section 4).
GROUP4X4, GROUP2X2, NOW_SIGNIFICANT_NEG, NOW_SIGNIFICANT_POS = 0, 1, 2, 3
INSIGNIFICANT, NEXT_ACCURACY0, NEXT_ACCURACY1, ZERO_TREE = 4, 5, 6, 7
TOKEN_NAMES = ("Group4x4", "Group2x2", "NowSignificantNeg", "NowSignificantPos",
               "Insignificant", "NextAccuracy0", "NextAccuracy1", "ZeroTree")
VOCAB_SIZE = len(TOKEN_NAMES)

METHODS = {"zeroblock": 0, "zerotree": 1}

# What kind of place the cursor is at decides the valid ids (spec section 6).
KIND_BLOCK, KIND_GROUP, KIND_SIGNIFICANT, KIND_COEFFICIENT, KIND_ROOT = 0, 1, 2, 3, 4
_COEFFICIENT_IDS = (1 << INSIGNIFICANT) | (1 << NOW_SIGNIFICANT_NEG) | (1 << NOW_SIGNIFICANT_POS)
KIND_MASKS = np.array([
    _COEFFICIENT_IDS | (1 << GROUP4X4) | (1 << GROUP2X2),    # intact 4 x 4 block
    _COEFFICIENT_IDS | (1 << GROUP2X2),                      # intact 2 x 2 group
    (1 << NEXT_ACCURACY0) | (1 << NEXT_ACCURACY1),           # significant coefficient
    _COEFFICIENT_IDS,                                        # other coefficient
    _COEFFICIENT_IDS | (1 << ZERO_TREE),                     # zero-tree root candidate
], dtype=np.int64)
_NOW_SIGNIFICANT = (1 << NOW_SIGNIFICANT_NEG) | (1 << NOW_SIGNIFICANT_POS)

# A batch of B scan states is three arrays (kept apart from each other and passed one by one:
# numba refcounts arrays packed in tuples on every call, which costs more than the scan itself):
#   approx   float64 (B, K)      the approximation a~ of each coefficient, in scan order
#   marks    int64   (B, 3, K)   per coefficient: flags, plane of a zero-tree skip, open need
#   counters int64   (B, N_COUNTERS)
# and a language is one table, int64 (9 + levels, K): row, column, flat index (into the components'
# matrices flattened one after another), zero-tree parent, level, final exponent of the level,
# component, its first and one-past-last scan index, then per deepest visited level d the size of
# each subtree cut at level d.
MAX_E0 = 1024  # frexp's exponent of the largest finite float64: the threshold table's end
_POW2_OFFSET = 1100  # ... and its start: 2^-1100, below any threshold a valid language reaches
M_FLAGS, M_SKIP, M_NEED = range(3)
F_SIGNIFICANT, F_BLOCK_DISSOLVED, F_GROUP_DISSOLVED = 1, 2, 4
# Shifted left by a level: a descendant at that level is significant (a zero-tree root needs none
# among the levels its plane visits).
F_DESCENDANT_SIGNIFICANT = 8
# C_LIMIT: the current plane ends at this scan index; C_DEPTH: the deepest level it visits.
(C_PLANE, C_CURSOR, C_PLANES, C_E0, C_NEED_PLANE, C_NEED_BLOCK, C_NEED_GROUP, C_DONE,
 C_METHOD, C_PLANE0_UNCOVERS, C_LIMIT, C_DEPTH) = range(12)
N_COUNTERS = 12
T_ROW, T_COL, T_FLAT, T_PARENT, T_LEVEL, T_FINAL, T_COMPONENT, T_START, T_END, T_SUBTREE = range(10)


def mask_to_ids(mask: int) -> list[int]:
    return [t for t in range(VOCAB_SIZE) if (int(mask) >> t) & 1]


def masks_to_bool(masks: np.ndarray) -> np.ndarray:
    """(...,) int bitmasks -> (..., VOCAB_SIZE) bool."""
    return ((np.asarray(masks)[..., None] >> np.arange(VOCAB_SIZE)) & 1).astype(bool)


def _final_exponent_value(f):
    """One int, or one per level as a tuple (which keeps the language hashable)."""
    return tuple(int(v) for v in f) if isinstance(f, (list, tuple, np.ndarray)) else f


def _check_final_exponent(f, size: int, what: str) -> None:
    lo, hi = 1 - _POW2_OFFSET, MAX_E0 - 1
    values, levels = (f if isinstance(f, tuple) else (f,)), _levels_of(size)
    if isinstance(f, tuple) and len(f) != levels:
        raise ValueError(f"{what} {f} has {len(f)} values; a {size} x {size} matrix has "
                         f"{levels} decomposition levels: give one integer, or {levels} (coarse to fine)")
    if any(not lo <= v <= hi for v in values):
        raise ValueError(f"{what} {f} is outside {lo}..{hi}")
    if list(values) != sorted(values):
        raise ValueError(f"{what} {f} decreases; per-level values run coarse to fine and must not "
                         "decrease (a coarse level keeps at least as fine planes as a finer one)")


def _check_size(size: int, what: str) -> None:
    if size < 4 or size & (size - 1):
        raise ValueError(f"{what} {size} is not a power of two >= 4")


def _levels_of(size: int) -> int:
    """Decomposition levels of an M x M matrix: LL with the coarsest details, then one per finer
    detail side."""
    return int(size).bit_length() - 2


class Component(NamedTuple):
    """One matrix the scan visits: its side and the final exponent of each of its levels."""

    size: int
    final_exponents: np.ndarray

    @property
    def levels(self) -> int:
        return _levels_of(self.size)

    @property
    def n_coefficients(self) -> int:
        return self.size * self.size


@dataclass(frozen=True)
class Language:
    """One wavelet language: coefficient matrix size, scan method and plane settings. The final
    exponent is one int, or one per decomposition level (coarse to fine, non-decreasing).

    Colour (`chroma_size` > 0): Y's matrix of side `size` with `final_exponent`, then Cb's and
    Cr's of side `chroma_size` with `chroma_final_exponent` (an int or one per chroma level; its
    lowest value at least Y's lowest: chroma is coarser or equal)."""

    size: int = 32  # M
    method: str = "zeroblock"
    final_exponent: int | tuple[int, ...] = -3
    initial_threshold: str = "per_image"
    chroma_size: int = 0  # M' of Cb and Cr; 0: a grey language
    chroma_final_exponent: int | tuple[int, ...] | None = None

    def __post_init__(self):
        if self.method not in METHODS:
            raise ValueError(f"method {self.method!r} is not one of {', '.join(METHODS)}")
        _check_size(self.size, "size")
        object.__setattr__(self, "final_exponent", _final_exponent_value(self.final_exponent))
        _check_final_exponent(self.final_exponent, self.size, "final exponent")
        if not self.colour:
            if self.chroma_final_exponent is not None:
                raise ValueError("a chroma final exponent needs a chroma size (a colour language)")
            return
        _check_size(self.chroma_size, "chroma size")
        if self.chroma_final_exponent is None:
            raise ValueError("a colour language needs a chroma final exponent")
        object.__setattr__(self, "chroma_final_exponent", _final_exponent_value(self.chroma_final_exponent))
        _check_final_exponent(self.chroma_final_exponent, self.chroma_size, "chroma final exponent")
        if self.components[1].final_exponents.min() < self.final_exponents.min():
            raise ValueError(f"chroma final exponent {self.chroma_final_exponent} goes below the luma's "
                             f"{self.final_exponent}: chroma keeps planes no finer than luma's finest")

    @property
    def colour(self) -> bool:
        return self.chroma_size > 0

    @cached_property
    def components(self) -> tuple[Component, ...]:
        """Y (or the grey matrix), then Cb and Cr for a colour language."""
        def component(size, f):
            return Component(size, np.broadcast_to(np.asarray(f, np.int64), (_levels_of(size),)))
        luma = component(self.size, self.final_exponent)
        if not self.colour:
            return (luma,)
        chroma = component(self.chroma_size, self.chroma_final_exponent)
        return luma, chroma, chroma

    @cached_property
    def starts(self) -> np.ndarray:
        """The first scan index of each component, and the total count last."""
        return np.concatenate([[0], np.cumsum([c.n_coefficients for c in self.components])]).astype(np.int64)

    @property
    def m(self) -> int:
        return int(self.size).bit_length() - 1

    @property
    def levels(self) -> int:
        """Decomposition levels (of Y's matrix for colour)."""
        return _levels_of(self.size)

    @property
    def final_exponents(self) -> np.ndarray:
        """The final exponent of each level, coarse to fine (Y's for colour)."""
        return self.components[0].final_exponents

    @property
    def min_final_exponent(self) -> int:
        """The last plane's threshold exponent (the coarsest luma level's)."""
        return int(self.final_exponents.min())

    @property
    def n_coefficients(self) -> int:
        return int(self.starts[-1])

    @property
    def method_id(self) -> int:
        return METHODS[self.method]

    @property
    def plane0_uncovers(self) -> bool:
        # With per-image thresholds, T0 <= max|a| by construction, so plane 0 uncovers something.
        return self.initial_threshold == "per_image"

    @cached_property
    def _scans(self) -> list["ComponentScan"]:
        return [ComponentScan.of(c.size, self.method) for c in self.components]

    def _joined(self, values) -> np.ndarray:
        return np.concatenate(list(values)).astype(np.int64)

    @cached_property
    def order(self) -> np.ndarray:
        """Flat index of each coefficient, in scan order: row * M_c + col, plus the component's
        start (its matrix flattened after the earlier components')."""
        return self._joined(s.order + start for s, start in zip(self._scans, self.starts))

    @cached_property
    def component(self) -> np.ndarray:
        """The component (0 Y or grey, 1 Cb, 2 Cr) of each coefficient in scan order."""
        return self._joined(np.full(c.n_coefficients, i) for i, c in enumerate(self.components))

    @cached_property
    def rows(self) -> np.ndarray:
        return self._joined(s.order // c.size for s, c in zip(self._scans, self.components))

    @cached_property
    def cols(self) -> np.ndarray:
        return self._joined(s.order % c.size for s, c in zip(self._scans, self.components))

    @cached_property
    def parent(self) -> np.ndarray:
        """Scan index of each coefficient's zero-tree parent, or -1 (LL and the coarsest details)."""
        return self._joined(np.where(s.parent >= 0, s.parent + start, -1) for s, start in zip(self._scans, self.starts))

    @cached_property
    def level(self) -> np.ndarray:
        """Decomposition level of each coefficient in scan order (in its component)."""
        return self._joined(s.level for s in self._scans)

    @cached_property
    def table(self) -> np.ndarray:
        """What the compiled kernels need to know about the scan: (9 + levels, K) int64."""
        finals = self._joined(c.final_exponents[s.level] for s, c in zip(self._scans, self.components))
        lengths = np.diff(self.starts)
        # A chroma component has fewer levels than Y: its deeper rows repeat its whole subtrees.
        subtrees = np.hstack([s.visible_subtree_sizes[np.minimum(np.arange(self.levels), c.levels - 1)]
                              for s, c in zip(self._scans, self.components)])
        return np.vstack([self.rows, self.cols, self.order, self.parent, self.level, finals, self.component,
                          np.repeat(self.starts[:-1], lengths), np.repeat(self.starts[1:], lengths),
                          subtrees]).astype(np.int64)

    def matrices(self, coeffs) -> list[np.ndarray]:
        """The components' coefficient matrices: a grey language's (N, M, M) array is its one
        matrix; a colour language takes (luma (N, M, M), chroma (N, 2, M', M'))."""
        if not self.colour:
            return [np.asarray(coeffs)]
        luma, chroma = coeffs
        return [np.asarray(luma), np.asarray(chroma)[:, 0], np.asarray(chroma)[:, 1]]

    def from_flat(self, flat: np.ndarray):
        """(N, K) values in flat order (`order`'s indices) -> what `matrices` takes."""
        parts = [flat[:, a:b].reshape(-1, c.size, c.size)
                 for a, b, c in zip(self.starts[:-1], self.starts[1:], self.components)]
        return parts[0] if not self.colour else (parts[0], np.stack(parts[1:], axis=1))

    def initial_exponents(self, coeffs) -> np.ndarray:
        """e0 per image (spec section 2; colour C2: over all components): floor(log2|a|) + 1 of the
        largest coefficient that can become significant (|a| >= 2^f of its level; all of them for
        one f), at least min f + 1; or m - 1. A coefficient below its level's last threshold would
        leave plane 0 empty."""
        matrices = self.matrices(coeffs)
        n = len(matrices[0])
        if self.initial_threshold == "uniform":
            return np.full(n, self.m - 1, dtype=np.int64)
        e0 = np.full(n, self.min_final_exponent + 1, dtype=np.int64)
        for matrix, component in zip(matrices, self.components):
            for level, f in enumerate(component.final_exponents):
                peak = self._level_peak(matrix, level)
                _, exponent = np.frexp(peak)  # peak = mantissa * 2^exponent, mantissa in [0.5, 1)
                e0 = np.where(peak >= np.ldexp(1.0, f), np.maximum(e0, exponent), e0)
        return e0

    @staticmethod
    def _level_peak(coeffs: np.ndarray, level: int) -> np.ndarray:
        """max|a| of each matrix over one level: [0:s, 0:s] less the coarser levels' [0:s/2, 0:s/2]
        (s = 2^(level+2); level 0 is the whole 4 x 4 corner)."""
        side = 4 << level
        half = side // 2
        parts = [coeffs[:, :side, :side]] if level == 0 else [coeffs[:, :half, half:side], coeffs[:, half:side, :side]]
        return np.max([np.maximum(part.max(axis=(1, 2)), -part.min(axis=(1, 2))) for part in parts], axis=0)

    def planes(self, e0) -> np.ndarray:
        return np.asarray(e0, dtype=np.int64) - self.min_final_exponent

    @property
    def e0_bounds(self) -> tuple[int, int]:
        """The initial exponents the kernels accept: at least min f + 1 (one plane), at most what a
        finite float64 coefficient can have (its threshold table ends there); m - 1 if uniform."""
        if self.initial_threshold == "uniform":
            return self.m - 1, self.m - 1
        return self.min_final_exponent + 1, MAX_E0

    def check_initial_exponents(self, initial_exponents) -> np.ndarray:
        e0 = np.atleast_1d(np.asarray(initial_exponents))
        if e0.ndim != 1 or not (np.issubdtype(e0.dtype, np.integer) or e0.size == 0):
            raise ValueError(f"initial exponents must be a 1-D array of integers, got shape {e0.shape} "
                             f"and dtype {e0.dtype}")
        e0 = e0.astype(np.int64)
        lo, hi = self.e0_bounds
        bad = np.flatnonzero((e0 < lo) | (e0 > hi))
        if len(bad):
            raise ValueError(f"initial exponent {e0[bad[0]]} (sequence {bad[0]}) is outside {lo}..{hi}, "
                             f"the range of this language (f={self.final_exponent}, "
                             f"{self.initial_threshold} thresholds)")
        return e0

    def check_sequences(self, tokens, offsets, initial_exponents) -> tuple[np.ndarray, ...]:
        """Flat sequences (tokens, offsets) and their e0, checked so that no kernel reads out of
        bounds: int64 copies, or ValueError naming what is wrong."""
        tokens = np.asarray(tokens)
        if tokens.ndim != 1 or not (np.issubdtype(tokens.dtype, np.integer) or tokens.size == 0):
            raise ValueError(f"tokens must be a 1-D array of integer ids, got shape {tokens.shape} "
                             f"and dtype {tokens.dtype}")
        offsets = np.asarray(offsets)
        if offsets.ndim != 1 or not np.issubdtype(offsets.dtype, np.integer):
            raise ValueError(f"offsets must be a 1-D array of integers, got shape {offsets.shape} "
                             f"and dtype {offsets.dtype}")
        e0 = self.check_initial_exponents(initial_exponents)
        if len(offsets) != len(e0) + 1:
            raise ValueError(f"{len(e0)} initial exponents need {len(e0) + 1} offsets, got {len(offsets)}")
        offsets = offsets.astype(np.int64)
        if offsets[0] < 0 or offsets[-1] > len(tokens) or (np.diff(offsets) < 0).any():
            raise ValueError(f"offsets must rise from >= 0 to <= {len(tokens)} (the number of tokens); "
                             f"got {offsets[0]}..{offsets[-1]}"
                             + (" with a decrease" if (np.diff(offsets) < 0).any() else ""))
        return tokens.astype(np.int64), offsets, e0


@dataclass(frozen=True)
class ComponentScan:
    """The scan of one M x M matrix (the contract's sections 3 and 7): flat index, zero-tree parent
    and level of each coefficient in scan order, and the visible subtree sizes."""

    order: np.ndarray
    parent: np.ndarray
    level: np.ndarray
    visible_subtree_sizes: np.ndarray

    @classmethod
    def of(cls, size: int, method: str) -> "ComponentScan":
        order = cls._order(size, method)
        n, levels = size * size, _levels_of(size)
        position = np.empty(n, dtype=np.int64)
        position[order] = np.arange(n)
        r, c = order // size, order % size
        has_parent = np.maximum(r, c) >= 4  # details of the level of side 2 have no parent
        parent = np.full(n, -1, dtype=np.int64)
        parent[has_parent] = position[(r[has_parent] // 2) * size + c[has_parent] // 2]
        # Level l ends at scan index 4^(l+2).
        level = np.searchsorted(4 ** np.arange(2, levels + 2), np.arange(n), side="right").astype(np.int64)
        # Row d: the coefficients of each zero-tree subtree (itself included) down to level d, what
        # a plane whose deepest level is d visits of it.
        sizes = (level[None, :] <= np.arange(levels)[:, None]).astype(np.int64)
        for k in range(n - 1, -1, -1):  # children come after parents
            if parent[k] >= 0:
                sizes[:, parent[k]] += sizes[:, k]
        return cls(order, parent, level, sizes)

    @staticmethod
    def _order(size: int, method: str) -> np.ndarray:
        units = [(0, 0, 2)]  # (row, col, side) of LL, then the detail subbands coarse to fine
        s = 2
        while s < size:
            units += [(0, s, s), (s, 0, s), (s, s, s)]
            s *= 2
        order: list[int] = []
        for row, col, side in units:
            if method == "zerotree":
                order += [(row + r) * size + col + c for r in range(side) for c in range(side)]
                continue
            blocks = [(row, col)] if side == 2 else [
                (row + br, col + bc) for br in range(0, side, 4) for bc in range(0, side, 4)]
            for r0, c0 in blocks:
                groups = [(r0, c0)] if side == 2 else [(r0 + gr, c0 + gc) for gr in (0, 2) for gc in (0, 2)]
                for r1, c1 in groups:
                    order += [(r1 + r) * size + c1 + c for r in (0, 1) for c in (0, 1)]
        return np.array(order, dtype=np.int64)


# ----- compiled kernels: state b is row b of (approx, marks, counters) -----

# 2^e for every exponent a float64 threshold can have, so a threshold is one table lookup.
_POW2 = np.ldexp(1.0, np.arange(-_POW2_OFFSET, MAX_E0))


@njit(cache=True, inline="always")
def threshold_of(counters, b):
    """T = 2^(e0 - 1 - plane) of state b's current plane."""
    return _POW2[counters[b, C_E0] - 1 - counters[b, C_PLANE] + _POW2_OFFSET]


@njit(cache=True, inline="always")
def visible_subtree(table, counters, b, k):
    """Size of k's zero-tree subtree cut at the current plane's deepest level: what a ZeroTree at k
    covers. (Callers read it up front, not in a branch: a counter loaded inside the branches of
    these inlined kernels costs the coder a quarter of its speed.)"""
    return table[T_SUBTREE + counters[b, C_DEPTH], k]


@njit(cache=True, inline="always")
def kind_at(table, marks, counters, b):
    """Kind of the place the cursor of state b points at (KIND_* constant)."""
    k = counters[b, C_CURSOR]
    depth = counters[b, C_DEPTH]  # up front (`visible_subtree`)
    f = marks[b, M_FLAGS, k]
    zerotree = counters[b, C_METHOD] == 1
    if not zerotree:
        if k - table[T_START, k] >= 16 and k % 16 == 0 and not (f & F_BLOCK_DISSOLVED):
            return KIND_BLOCK
        if k % 4 == 0 and not (f & F_GROUP_DISSOLVED):
            return KIND_GROUP
    if f & F_SIGNIFICANT:
        return KIND_SIGNIFICANT
    # A root's subtree, as the plane sees it, is more than itself and has no significant
    # descendant at the levels 0..depth the plane visits (a level's flag is its bit).
    visible = F_DESCENDANT_SIGNIFICANT * ((2 << depth) - 1)
    if zerotree and table[T_SUBTREE + depth, k] > 1 and not (f & visible):
        return KIND_ROOT
    return KIND_COEFFICIENT


@njit(cache=True, inline="always")
def _cover(token, subtree):
    """How many coefficients (of this plane's scan) a token accounts for; `subtree`: the cursor's
    `visible_subtree`."""
    if token == GROUP4X4:
        return 16
    if token == GROUP2X2:
        return 4
    if token == ZERO_TREE:
        return subtree
    return 1


@njit(cache=True, inline="always")
def valid_mask(table, marks, counters, b, canonical):
    """Bitmask of the ids valid at the cursor of state b (0 once the sequence is complete)."""
    if counters[b, C_DONE]:
        return 0
    mask = KIND_MASKS[kind_at(table, marks, counters, b)]
    return canonical_mask(table, marks, counters, b, mask) if canonical else mask


@njit(cache=True, inline="always")
def canonical_mask(table, marks, counters, b, mask):
    """The ids of `mask` that keep the sequence in canonical form."""
    k = counters[b, C_CURSOR]
    subtree = visible_subtree(table, counters, b, k)
    # Refuse each non-uncovering id that would cover the last open place of an obligation.
    zerotree = counters[b, C_METHOD] == 1
    for token in range(VOCAB_SIZE):
        if not (mask >> token) & 1 or (_NOW_SIGNIFICANT >> token) & 1:
            continue
        cover = _cover(token, subtree)
        dead = cover == counters[b, C_NEED_PLANE] or cover == counters[b, C_NEED_BLOCK] \
            or cover == counters[b, C_NEED_GROUP]
        p = table[T_PARENT, k] if zerotree else -1
        while p >= 0 and not dead:
            dead = cover == marks[b, M_NEED, p]
            p = table[T_PARENT, p]
        if dead:
            mask &= ~(1 << token)
    return mask


@njit(cache=True, inline="always")
def reset(table, approx, marks, counters, b, e0, method, plane0_uncovers):
    """Start state b on a new sequence whose initial exponent is e0."""
    final_exponent = table[T_FINAL, 0]  # the coarsest level's: the lowest
    approx[b, :] = 0.0
    marks[b, M_FLAGS, :] = 0
    marks[b, M_SKIP, :] = -1
    marks[b, M_NEED, :] = 0
    counters[b, :] = 0
    counters[b, C_E0] = e0
    counters[b, C_PLANES] = e0 - final_exponent
    counters[b, C_DONE] = counters[b, C_PLANES] <= 0
    counters[b, C_METHOD] = method
    counters[b, C_PLANE0_UNCOVERS] = plane0_uncovers
    if not counters[b, C_DONE]:
        _enter_component(table, counters, b)
    # Plane 0 must uncover something among what it visits (in all components), except at
    # e0 = min f + 1: there the image may lie wholly below the one threshold 2^f (a blank image, or
    # e0 raised to f + 1), and nothing is uncovered.
    if plane0_uncovers and e0 > final_exponent + 1:
        start = 0
        while start < table.shape[1]:
            end = table[T_END, start]
            counters[b, C_NEED_PLANE] += _visited(table, start, end, e0 - 1)
            start = end


@njit(cache=True, inline="always")
def _visited(table, start, end, t):
    """How many of the scan indices start..end-1 (one component) a plane of threshold 2^t visits:
    the levels whose final exponent is at most t, a prefix of the component's scan."""
    return np.searchsorted(table[T_FINAL, start:end], t, side="right")


@njit(cache=True, inline="always")
def _enter_component(table, counters, b):
    """From the cursor at a component's start: the first component (it or a later one) that the
    current plane visits, its end for this plane (`C_LIMIT`) and deepest level; 0 if none is left."""
    t = counters[b, C_E0] - 1 - counters[b, C_PLANE]
    while counters[b, C_CURSOR] < table.shape[1]:
        start = counters[b, C_CURSOR]
        visited = _visited(table, start, table[T_END, start], t)
        if visited > 0:
            counters[b, C_LIMIT] = start + visited
            counters[b, C_DEPTH] = table[T_LEVEL, start + visited - 1]
            return 1
        counters[b, C_CURSOR] = table[T_END, start]
    return 0


@njit(cache=True, inline="always")
def _settle(table, marks, counters, b):
    """Move the cursor over plane ends and skipped zero-tree descendants."""
    while True:
        k = counters[b, C_CURSOR]
        if k >= counters[b, C_LIMIT]:  # this component's pass is over: the next one's, or the next plane
            counters[b, C_CURSOR] = table[T_END, counters[b, C_LIMIT] - 1]
            if _enter_component(table, counters, b):
                continue
            counters[b, C_PLANE] += 1
            counters[b, C_CURSOR] = 0
            counters[b, C_NEED_PLANE] = 0
            if counters[b, C_PLANE] >= counters[b, C_PLANES]:
                counters[b, C_DONE] = 1
                return
            _enter_component(table, counters, b)
            continue
        if counters[b, C_METHOD] == 0:
            # A new block or group: the previous one's obligation is over (only a non-canonical
            # sequence can leave one unmet).
            if k % 16 == 0:
                counters[b, C_NEED_BLOCK] = 0
            if k % 4 == 0:
                counters[b, C_NEED_GROUP] = 0
            return
        p = table[T_PARENT, k]
        if p >= 0 and marks[b, M_SKIP, p] == counters[b, C_PLANE]:
            marks[b, M_SKIP, k] = counters[b, C_PLANE]  # so its own descendants are skipped too
            counters[b, C_CURSOR] = k + 1
            continue
        return


@njit(cache=True, inline="always")
def apply(table, approx, marks, counters, b, token):
    """Advance state b by one token (assumed valid): scan cursor, obligations and approximation."""
    apply_at(table, approx, marks, counters, b, kind_at(table, marks, counters, b), token)


@njit(cache=True, inline="always")
def apply_at(table, approx, marks, counters, b, kind, token):
    """`apply`, for a caller that already knows the kind of the cursor's place."""
    k = counters[b, C_CURSOR]
    subtree = visible_subtree(table, counters, b, k)
    zerotree = counters[b, C_METHOD] == 1
    uncovers = token == NOW_SIGNIFICANT_NEG or token == NOW_SIGNIFICANT_POS

    # Dissolving blocks and groups open obligations; so does a root that does not emit ZeroTree.
    if kind == KIND_BLOCK and token != GROUP4X4:
        marks[b, M_FLAGS, k] |= F_BLOCK_DISSOLVED
        counters[b, C_NEED_BLOCK] = 16
    if (kind == KIND_BLOCK or kind == KIND_GROUP) and token != GROUP4X4 and token != GROUP2X2:
        marks[b, M_FLAGS, k] |= F_GROUP_DISSOLVED
        counters[b, C_NEED_GROUP] = 4
    cover = _cover(token, subtree)
    if uncovers:
        counters[b, C_NEED_PLANE] = 0
        counters[b, C_NEED_BLOCK] = 0
        counters[b, C_NEED_GROUP] = 0
    else:
        if counters[b, C_NEED_PLANE] > 0:
            counters[b, C_NEED_PLANE] -= cover
        if counters[b, C_NEED_BLOCK] > 0:
            counters[b, C_NEED_BLOCK] -= cover
        if counters[b, C_NEED_GROUP] > 0:
            counters[b, C_NEED_GROUP] -= cover
    if zerotree:
        p = table[T_PARENT, k]
        while p >= 0:
            if marks[b, M_NEED, p] > 0:
                marks[b, M_NEED, p] = 0 if uncovers else marks[b, M_NEED, p] - cover
            if uncovers:
                marks[b, M_FLAGS, p] |= F_DESCENDANT_SIGNIFICANT << table[T_LEVEL, k]
            p = table[T_PARENT, p]
        if kind == KIND_ROOT and token == INSIGNIFICANT:
            marks[b, M_NEED, k] = subtree - 1

    # Coefficient updates (spec section 4).
    if uncovers:
        threshold = threshold_of(counters, b)
        approx[b, k] = 1.5 * threshold if token == NOW_SIGNIFICANT_POS else -1.5 * threshold
        marks[b, M_FLAGS, k] |= F_SIGNIFICANT
    elif token == NEXT_ACCURACY0 or token == NEXT_ACCURACY1:
        step = 0.5 * threshold_of(counters, b)
        if token == NEXT_ACCURACY0:
            step = -step
        approx[b, k] += step if approx[b, k] > 0 else -step
    elif token == ZERO_TREE:
        marks[b, M_SKIP, k] = counters[b, C_PLANE]

    counters[b, C_CURSOR] = k + (1 if zerotree else cover)
    _settle(table, marks, counters, b)


class ScanState(NamedTuple):
    approx: np.ndarray
    marks: np.ndarray
    counters: np.ndarray


def new_state(language: Language, batch: int) -> ScanState:
    n = language.n_coefficients
    return ScanState(np.zeros((batch, n), np.float64), np.zeros((batch, 3, n), np.int64),
                     np.zeros((batch, N_COUNTERS), np.int64))


@njit(cache=True)
def _reset_all(table, approx, marks, counters, e0, method, plane0_uncovers):
    for b in range(len(e0)):
        reset(table, approx, marks, counters, b, e0[b], method, plane0_uncovers)


@njit(cache=True)
def _reset_rows(table, approx, marks, counters, rows, e0, method, plane0_uncovers):
    for n in range(len(rows)):
        reset(table, approx, marks, counters, rows[n], e0[n], method, plane0_uncovers)


@njit(cache=True)
def _advance_row(table, approx, marks, counters, b, tokens, canonical):
    """Apply a run of tokens to state b; -1, or the index of the first token that is not valid."""
    for i in range(len(tokens)):
        token = tokens[i]
        if token < 0 or token >= VOCAB_SIZE or not (valid_mask(table, marks, counters, b, canonical) >> token) & 1:
            return i
        apply(table, approx, marks, counters, b, token)
    return -1


@njit(cache=True)
def _observe(table, marks, counters, canonical, bp, i1, i2, component, masks, done):
    for b in range(len(done)):
        done[b] = counters[b, C_DONE]
        k = counters[b, C_CURSOR]
        bp[b] = counters[b, C_PLANE]
        i1[b] = table[T_ROW, k] if not done[b] else 0
        i2[b] = table[T_COL, k] if not done[b] else 0
        component[b] = table[T_COMPONENT, k] if not done[b] else 0
        masks[b] = valid_mask(table, marks, counters, b, canonical)


@njit(cache=True)
def _step_all(table, approx, marks, counters, tokens, canonical):
    """Apply tokens[b] to every unfinished state; -1, or the first b whose token is not valid."""
    for b in range(len(tokens)):
        if counters[b, C_DONE]:
            continue
        token = tokens[b]
        if token < 0 or token >= VOCAB_SIZE or not (valid_mask(table, marks, counters, b, canonical) >> token) & 1:
            return b
        apply(table, approx, marks, counters, b, token)
    return -1


class BatchScan:
    """B scan states advanced together: the sampler's view of the grammar.

    After construction and after each `step`, `bp`, `i1`, `i2` and `component` hold the position
    of each sequence's next token, `masks` the bitmask of its valid ids (canonical form unless
    canonical=False) and `done` whether the sequence is complete (finished states ignore tokens).
    """

    def __init__(self, language: Language, initial_exponents, canonical: bool = True):
        self.language = language
        self.canonical = canonical
        e0 = language.check_initial_exponents(initial_exponents)
        self.state = new_state(language, len(e0))
        _reset_all(language.table, *self.state, e0, language.method_id, int(language.plane0_uncovers))
        self.bp, self.i1, self.i2, self.component, self.masks = (np.zeros(len(e0), np.int64) for _ in range(5))
        self.done = np.zeros(len(e0), np.bool_)
        self.observe()

    def observe(self) -> None:
        """Read positions, masks and `done` off the states (after changing them directly)."""
        _observe(self.language.table, self.state.marks, self.state.counters, self.canonical,
                 self.bp, self.i1, self.i2, self.component, self.masks, self.done)

    def valid(self) -> np.ndarray:
        """(B, VOCAB_SIZE) bool: the valid ids of each sequence's next token."""
        return masks_to_bool(self.masks)

    def step(self, tokens) -> None:
        tokens = np.asarray(tokens, dtype=np.int64).reshape(-1)
        if len(tokens) != len(self.done):
            raise ValueError(f"{len(tokens)} tokens for {len(self.done)} sequences")
        bad = _step_all(self.language.table, *self.state, tokens, self.canonical)
        self.observe()
        if bad >= 0:
            raise ValueError(
                f"sequence {bad}: token {tokens[bad]} is not valid at (bp={self.bp[bad]}, "
                f"i1={self.i1[bad]}, i2={self.i2[bad]}); valid: {mask_to_ids(self.masks[bad])}")

    def approximations(self) -> np.ndarray:
        """(B, M, M) coefficient approximations of the sequences so far."""
        return scan_to_matrix(self.state.approx, self.language)

    # ----- what continuous batching and prefilled prefixes need -----

    def restart(self, rows, initial_exponents) -> None:
        """States `rows` start new sequences with the given e0."""
        rows = np.asarray(rows, dtype=np.int64)
        e0 = self.language.check_initial_exponents(initial_exponents)
        if len(rows) != len(e0) or (len(rows) and (rows.min() < 0 or rows.max() >= len(self.done))):
            raise ValueError(f"rows {rows.tolist()} and {len(e0)} initial exponents for {len(self.done)} states")
        _reset_rows(self.language.table, *self.state, rows, e0, self.language.method_id,
                    int(self.language.plane0_uncovers))
        self.observe()

    def advance(self, row: int, tokens) -> None:
        """Apply a run of tokens (a prefix) to one state."""
        tokens = np.asarray(tokens, dtype=np.int64).reshape(-1)
        if not 0 <= row < len(self.done):
            raise ValueError(f"row {row} of {len(self.done)} states")
        bad = _advance_row(self.language.table, *self.state, row, tokens, self.canonical)
        self.observe()
        if bad >= 0:
            raise ValueError(f"row {row}: prefix token {bad} ({tokens[bad]}) is not valid there")

    def keep(self, rows) -> None:
        """Keep only states `rows`, in that order (the others are dropped)."""
        rows = np.asarray(rows, dtype=np.int64)
        self.state = ScanState(*(np.ascontiguousarray(a[rows]) for a in self.state))
        self.bp, self.i1, self.i2, self.component, self.masks = (
            a[rows] for a in (self.bp, self.i1, self.i2, self.component, self.masks))
        self.done = self.done[rows]


def scan_to_matrix(scan_values: np.ndarray, language: Language):
    """(N, K) values in scan order -> (N, M, M) coefficient matrices (colour: luma (N, M, M) and
    chroma (N, 2, M', M'))."""
    out = np.empty_like(scan_values)
    out[:, language.order] = scan_values
    return language.from_flat(out)


@njit(cache=True, inline="always")
def store_matrix(table, approx, b, out):
    """Row b of approx (scan order) into out, a flat M * M coefficient matrix."""
    for k in range(table.shape[1]):
        out[table[T_FLAT, k]] = approx[b, k]


@njit(cache=True)
def _sequence_masks(table, approx, marks, counters, tokens, bp, i1, i2, component, offsets, e0, method,
                    plane0_uncovers, out):
    """Returns (-1, 0, 0), or (sequence, index in it, reason) of the first problem: 1 a token the
    grammar (canonical form) does not allow, 2 a position that is not the scan's, 3 a sequence
    that ends before its last plane does."""
    positions = len(bp) > 0
    for j in range(len(e0)):
        reset(table, approx, marks, counters, 0, e0[j], method, plane0_uncovers)
        for i in range(offsets[j], offsets[j + 1]):
            mask = valid_mask(table, marks, counters, 0, True)
            if not (mask >> tokens[i]) & 1:
                return j, i - offsets[j], 1
            k = counters[0, C_CURSOR]
            if positions and (bp[i] != counters[0, C_PLANE] or i1[i] != table[T_ROW, k] or i2[i] != table[T_COL, k]
                              or component[i] != table[T_COMPONENT, k]):
                return j, i - offsets[j], 2
            out[i] = mask
            apply(table, approx, marks, counters, 0, tokens[i])
        if not counters[0, C_DONE]:
            return j, offsets[j + 1] - offsets[j], 3
    return -1, 0, 0


def sequence_masks(tokens: np.ndarray, offsets: np.ndarray, initial_exponents, language: Language,
                   positions: tuple[np.ndarray, ...] | None = None) -> np.ndarray:
    """The canonical valid-id bitmask in front of every token of every sequence (flat, aligned
    with tokens): what the model may choose from at each step, for masked training and NLL.
    Every sequence must be complete and canonical; with `positions` (bp, i1, i2 and, for colour,
    the component of every token) those must be the scan's too. ValueError names the first
    sequence that is not."""
    tokens, offsets, e0 = language.check_sequences(tokens, offsets, initial_exponents)
    if tokens.size and (tokens.min() < 0 or tokens.max() >= VOCAB_SIZE):
        bad = int(np.flatnonzero((tokens < 0) | (tokens >= VOCAB_SIZE))[0])
        raise ValueError(f"token {tokens[bad]} at index {bad} is not an id of the language (0..{VOCAB_SIZE - 1})")
    if positions is None:
        bp = i1 = i2 = component = np.zeros(0, np.int64)
    else:
        bp, i1, i2, *rest = (np.asarray(a, np.int64) for a in positions)
        component = rest[0] if rest else np.zeros(len(bp), np.int64)
        if not len(bp) == len(i1) == len(i2) == len(component) == len(tokens):
            raise ValueError(f"positions of {len(bp)}, {len(i1)}, {len(i2)}, {len(component)} tokens "
                             f"for {len(tokens)} tokens")
    out = np.zeros(len(tokens), dtype=np.uint8)
    j, index, reason = _sequence_masks(language.table, *new_state(language, 1), tokens, bp, i1, i2, component, offsets,
                                       e0, language.method_id, int(language.plane0_uncovers), out)
    if j >= 0:
        problem = {1: f"token {index} is not valid there (not in the grammar's canonical form)",
                   2: f"token {index} has position (bp, i1, i2, component) = ({bp[offsets[j] + index]}, "
                      f"{i1[offsets[j] + index]}, {i2[offsets[j] + index]}, {component[offsets[j] + index]}), "
                      "not the scan's",
                   3: f"it ends after {index} tokens, before its last bit-plane does"}[reason]
        raise ValueError(f"sequence {j}: {problem}")
    return out
