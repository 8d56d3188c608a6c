"""Scan-state context: what the decoder already knows about the place the next token is written,
as a few small categorical features the model embeds beside the positions (`model.context: scan`).

An embedded wavelet coder such as JPEG 2000's EBCOT codes each bit with a context formed from the
significance of the coefficient's neighbours and the signs of those that are significant; the
model would otherwise have to infer them from the token history. At the cursor's coefficient k:

    state       0 insignificant; else 1 + 2 * min(refinements so far, 7) + (1 if negative)
    parent      0 no parent (LL and the coarsest details), 1 insignificant, 2 significant
    neighbours  h * 15 + v * 5 + d: significant horizontal (0..2), vertical (0..2) and diagonal
                (0..4) neighbours in k's own subband (EBCOT's significance context inputs)
    signs       (h + 1) * 3 + (v + 1): the signs of the significant horizontal and vertical
                neighbours, each pair summed and clipped to -1..1 (EBCOT's sign context inputs)

A group token (Group4x4, Group2x2, ZeroTree) is only ever valid on a unit with no significant
coefficient (the grammar's "intact"), so the number of significant coefficients inside it is
always 0: it is not a feature. The features are read off the scan state that the grammar keeps
(`grammar`), so training (each token of a sequence, replayed) and sampling (each row of a batch
of scan states) compute them with the same kernel. A finished sequence's features are 0.
"""
from __future__ import annotations

import math
from functools import cache

import numpy as np
from numba import njit

from . import grammar
from .grammar import C_CURSOR, C_DONE, C_E0, C_PLANE, F_SIGNIFICANT, M_FLAGS, T_PARENT

FEATURES = ("state", "parent", "neighbours", "signs")
MAX_REFINEMENTS = 7
SIZES = (1 + 2 * (MAX_REFINEMENTS + 1), 3, 3 * 3 * 5, 3 * 3)  # ids of each feature
# Neighbour offsets (row, column): two horizontal, two vertical, four diagonal.
OFFSETS = ((0, -1), (0, 1), (-1, 0), (1, 0), (-1, -1), (-1, 1), (1, -1), (1, 1))


def subband(row: int, col: int) -> tuple[int, int, int]:
    """(first row, first column, side) of the subband that holds coefficient (row, col)."""
    side = 1 << max(1, max(row, col).bit_length() - 1)  # LL and the coarsest details have side 2
    if max(row, col) < 2:
        return 0, 0, 2
    return (0 if row < side else side), (0 if col < side else side), side


@cache
def neighbour_table(language: grammar.Language) -> np.ndarray:
    """(8, K) int64: the scan index of each coefficient's neighbours in its subband (OFFSETS
    order), -1 where the neighbour lies outside the subband."""
    position = np.empty(language.n_coefficients, np.int64)
    position[language.order] = np.arange(language.n_coefficients)
    out = np.full((len(OFFSETS), language.n_coefficients), -1, np.int64)
    for k, (row, col) in enumerate(zip(language.rows.tolist(), language.cols.tolist())):
        r0, c0, side = subband(row, col)
        for j, (dr, dc) in enumerate(OFFSETS):
            r, c = row + dr, col + dc
            if r0 <= r < r0 + side and c0 <= c < c0 + side:
                out[j, k] = position[r * language.size + c]
    return out


@njit(cache=True, inline="always")
def features_at(table, neighbours, approx, marks, counters, b, out):
    """The features of state b's next token into out (4,)."""
    if counters[b, C_DONE]:
        out[:] = 0
        return
    k = counters[b, C_CURSOR]
    out[0] = 0
    if marks[b, M_FLAGS, k] & F_SIGNIFICANT:
        # |a~| lies in [T_s, 2 T_s) for the threshold T_s = 2^t_s it became significant at, and
        # every plane since (threshold exponent t_s - 1 down to the current one + 1) refined it.
        _, exponent = math.frexp(abs(approx[b, k]))
        current = counters[b, C_E0] - 1 - counters[b, C_PLANE]
        refinements = min(exponent - 1 - current - 1, MAX_REFINEMENTS)
        out[0] = 1 + 2 * refinements + (1 if approx[b, k] < 0 else 0)
    parent = table[T_PARENT, k]
    out[1] = 0 if parent < 0 else (2 if marks[b, M_FLAGS, parent] & F_SIGNIFICANT else 1)
    # Significant neighbours and the sum of their signs: horizontal, vertical, diagonal (OFFSETS).
    h = v = d = h_sign = v_sign = 0
    for j in range(8):
        n = neighbours[j, k]
        if n < 0 or not marks[b, M_FLAGS, n] & F_SIGNIFICANT:
            continue
        sign = 1 if approx[b, n] > 0 else -1
        if j < 2:
            h += 1
            h_sign += sign
        elif j < 4:
            v += 1
            v_sign += sign
        else:
            d += 1
    out[2] = h * 15 + v * 5 + d
    out[3] = (min(max(h_sign, -1), 1) + 1) * 3 + min(max(v_sign, -1), 1) + 1


@njit(cache=True)
def _rows(table, neighbours, approx, marks, counters, out):
    for b in range(len(out)):
        features_at(table, neighbours, approx, marks, counters, b, out[b])


@njit(cache=True)
def _sequences(table, neighbours, approx, marks, counters, tokens, offsets, e0, method, plane0_uncovers, out):
    """Replay each sequence (or prefix), writing every token's features; -1, or the first
    sequence with a token the grammar refuses (or one after its end)."""
    for j in range(len(e0)):
        grammar.reset(table, approx, marks, counters, 0, e0[j], method, plane0_uncovers)
        for i in range(offsets[j], offsets[j + 1]):
            if not (grammar.valid_mask(table, marks, counters, 0, False) >> tokens[i]) & 1:
                return j
            features_at(table, neighbours, approx, marks, counters, 0, out[i])
            grammar.apply(table, approx, marks, counters, 0, tokens[i])
    return -1


def of_sequences(tokens, offsets, initial_exponents, language: grammar.Language) -> np.ndarray:
    """(tokens, 4) int64: the features in front of every token of base-language sequences (or
    prefixes of them); ValueError names a sequence the grammar refuses."""
    tokens, offsets, e0 = language.check_sequences(tokens, offsets, initial_exponents)
    out = np.zeros((len(tokens), len(FEATURES)), np.int64)
    bad = _sequences(language.table, neighbour_table(language), *grammar.new_state(language, 1), tokens, offsets,
                     e0, language.method_id, int(language.plane0_uncovers), out)
    if bad >= 0:
        raise ValueError(f"sequence {bad}: a token the grammar does not allow there; no context features")
    return out


def of_scan(scan: grammar.BatchScan) -> np.ndarray:
    """(B, 4) int64: the features of each row's next token."""
    out = np.zeros((len(scan.done), len(FEATURES)), np.int64)
    _rows(scan.language.table, neighbour_table(scan.language), *scan.state, out)
    return out
