"""The embedded wavelet coder: coefficient matrices to wavelet-language sequences and back.

Both directions drive the scan grammar of `grammar` (the encoder picks each token from
the coefficients, the decoder checks each token against the grammar's valid ids), compiled with
numba: a 1,200-token MNIST sequence costs a few tens of microseconds either way.
"""
from __future__ import annotations

import numpy as np
from numba import njit

from . import grammar
from .encoded import Encoded
from .grammar import (
    C_CURSOR,
    C_DONE,
    C_LIMIT,
    C_PLANE,
    GROUP2X2,
    GROUP4X4,
    INSIGNIFICANT,
    KIND_BLOCK,
    KIND_GROUP,
    KIND_MASKS,
    KIND_ROOT,
    KIND_SIGNIFICANT,
    NEXT_ACCURACY0,
    NEXT_ACCURACY1,
    NOW_SIGNIFICANT_NEG,
    NOW_SIGNIFICANT_POS,
    T_COL,
    T_COMPONENT,
    T_FLAT,
    T_PARENT,
    T_ROW,
    T_START,
    ZERO_TREE,
    Language,
)


def _check_matrix(coeffs, size: int, what: str) -> np.ndarray:
    coeffs = np.asarray(coeffs)
    if coeffs.ndim != 3 or coeffs.shape[1:] != (size, size):
        raise ValueError(f"{what} must have shape (N, {size}, {size}), got {coeffs.shape}")
    if not np.issubdtype(coeffs.dtype, np.floating) and not np.issubdtype(coeffs.dtype, np.integer):
        raise ValueError(f"{what} must be real numbers, got dtype {coeffs.dtype}")
    coeffs = coeffs.astype(np.float64, copy=False)
    if not np.isfinite(coeffs).all():
        bad = np.argwhere(~np.isfinite(coeffs))[0]
        raise ValueError(f"{what} must be finite; image {bad[0]} has {coeffs[tuple(bad)]} "
                         f"at ({bad[1]}, {bad[2]})")
    return coeffs


def _check_coefficients(coeffs, language: Language):
    """What `language.matrices` takes, checked: float64 matrices of the right shapes (a grey
    language also takes one (M, M) matrix)."""
    if not language.colour:
        coeffs = np.asarray(coeffs)
        if coeffs.ndim == 2:
            coeffs = coeffs[None]
        checked = _check_matrix(coeffs, language.size, "coefficients")
    else:
        if not isinstance(coeffs, (tuple, list)) or len(coeffs) != 2:
            raise ValueError("colour coefficients are a pair: luma (N, M, M) and chroma (N, 2, M', M')")
        luma = _check_matrix(coeffs[0], language.size, "luma coefficients")
        chroma = np.asarray(coeffs[1])
        if chroma.ndim != 4 or chroma.shape[:2] != (len(luma), 2):
            raise ValueError(f"chroma coefficients must have shape ({len(luma)}, 2, {language.chroma_size}, "
                             f"{language.chroma_size}), got {chroma.shape}")
        chroma = np.stack([_check_matrix(chroma[:, c], language.chroma_size, "chroma coefficients")
                           for c in range(2)], axis=1)
        checked = (luma, chroma)
    if language.initial_threshold == "uniform":
        limit = 2.0 ** (language.m - 1)
        peak = max(np.abs(m).max(initial=0.0) for m in language.matrices(checked))
        if peak > limit:
            raise ValueError(f"uniform initial threshold needs max|a| <= {limit:g} "
                             f"(images with pixels in [0, 1]); got {peak:g}")
    return checked


@njit(cache=True, inline="always")
def _subtree_max(table, magnitude, start, limit, out):
    """Largest magnitude in each zero-tree subtree, over the coefficients a component's pass
    visits (scan indices start..limit-1)."""
    out[start:limit] = magnitude[start:limit]
    for k in range(limit - 1, start - 1, -1):  # children come after their parents in scan order
        parent = table[T_PARENT, k]
        if parent >= 0:
            out[parent] = max(out[parent], out[k])


@njit(cache=True)
def _encode_one(table, approx, marks, counters, scratch, a, e0, method, plane0_uncovers,
                out_tokens, out_bp, out_i1, out_i2, out_component, start):
    n = len(a)
    magnitude, subtree_max, group_max, block_max = scratch[0], scratch[1], scratch[2], scratch[3]
    # Largest magnitude inside each group and block, to decide group tokens (zero-tree subtrees:
    # per plane, over what it visits).
    group_max[:] = 0.0
    block_max[:] = 0.0
    for k in range(n):
        magnitude[k] = abs(a[table[T_FLAT, k]])
    if method == 0:
        for k in range(n):
            group_max[k // 4] = max(group_max[k // 4], magnitude[k])
            block_max[k // 16] = max(block_max[k // 16], magnitude[k])

    grammar.reset(table, approx, marks, counters, 0, e0, method, plane0_uncovers)
    i = start
    plane, limit, threshold = -1, -1, 0.0
    while not counters[0, C_DONE]:
        k = counters[0, C_CURSOR]
        kind = grammar.kind_at(table, marks, counters, 0)
        if counters[0, C_PLANE] != plane:
            plane = counters[0, C_PLANE]
            threshold = grammar.threshold_of(counters, 0)
        if method == 1 and counters[0, C_LIMIT] != limit:  # a pass over other levels or another component
            limit = counters[0, C_LIMIT]
            _subtree_max(table, magnitude, table[T_START, k], limit, subtree_max)
        if magnitude[k] >= threshold:
            token = NOW_SIGNIFICANT_POS if a[table[T_FLAT, k]] > 0 else NOW_SIGNIFICANT_NEG
        else:
            token = INSIGNIFICANT
        if kind == KIND_BLOCK and block_max[k // 16] < threshold:
            token = GROUP4X4
        elif (kind == KIND_BLOCK or kind == KIND_GROUP) and group_max[k // 4] < threshold:
            token = GROUP2X2
        elif kind == KIND_ROOT and subtree_max[k] < threshold:
            token = ZERO_TREE
        elif kind == KIND_SIGNIFICANT:
            token = NEXT_ACCURACY1 if magnitude[k] > abs(approx[0, k]) else NEXT_ACCURACY0
        out_tokens[i] = token
        out_bp[i] = counters[0, C_PLANE]
        out_i1[i] = table[T_ROW, k]
        out_i2[i] = table[T_COL, k]
        out_component[i] = table[T_COMPONENT, k]
        i += 1
        grammar.apply_at(table, approx, marks, counters, 0, kind, token)
    return i


@njit(cache=True)
def _encode_batch(table, approx, marks, counters, coeffs, e0, method, plane0_uncovers,
                  out_tokens, out_bp, out_i1, out_i2, out_component, offsets, final_approx):
    scratch = np.zeros((4, table.shape[1]))
    for j in range(len(e0)):
        offsets[j + 1] = _encode_one(
            table, approx, marks, counters, scratch, coeffs[j], e0[j], method, plane0_uncovers,
            out_tokens, out_bp, out_i1, out_i2, out_component, offsets[j])
        if len(final_approx):
            grammar.store_matrix(table, approx, 0, final_approx[j])


def encode(coeffs, language: Language, return_approximation: bool = False):
    """(N, M, M) (or one (M, M)) coefficient matrices -> Encoded sequences; colour: the pair
    luma (N, M, M), chroma (N, 2, M', M').

    With return_approximation, also the encoder's final approximation (in the same form).
    """
    coeffs = _check_coefficients(coeffs, language)
    flat = np.concatenate([m.reshape(len(m), -1) for m in language.matrices(coeffs)], axis=1)
    n = len(flat)
    e0 = language.initial_exponents(coeffs)
    # At most one token per coefficient and plane. np.empty only reserves address space: the
    # pages the encoder never writes are never backed by memory.
    capacity = int(language.planes(e0).sum()) * language.n_coefficients
    buffers = [np.empty(capacity, np.uint8) for _ in range(5)]
    offsets = np.zeros(n + 1, dtype=np.int64)
    approx = np.zeros((n if return_approximation else 0, language.n_coefficients))
    _encode_batch(language.table, *grammar.new_state(language, 1), flat, e0,
                  language.method_id, int(language.plane0_uncovers), *buffers, offsets, approx)
    tokens, bp, i1, i2, component = (buf[:offsets[-1]] for buf in buffers)
    encoded = Encoded(tokens, bp, i1, i2, offsets, e0.astype(np.int8), component)
    if return_approximation:
        return encoded, language.from_flat(approx)
    return encoded


@njit(cache=True)
def _decode_batch(table, approx, marks, counters, tokens, offsets, e0, method, plane0_uncovers, out):
    """Replay each sequence; returns (-1, -1, 0) or (sequence, index, reason) of the first error
    (reason 1: token after the end of the last plane, 2: token not valid at its place)."""
    for j in range(len(e0)):
        grammar.reset(table, approx, marks, counters, 0, e0[j], method, plane0_uncovers)
        for i in range(offsets[j], offsets[j + 1]):
            if counters[0, C_DONE]:
                return j, i - offsets[j], 1
            token = tokens[i]
            kind = grammar.kind_at(table, marks, counters, 0)
            if token < 0 or token >= 8 or not (KIND_MASKS[kind] >> token) & 1:
                return j, i - offsets[j], 2
            grammar.apply_at(table, approx, marks, counters, 0, kind, token)
        grammar.store_matrix(table, approx, 0, out[j])
    return -1, -1, 0


def decode_batch(tokens: np.ndarray, offsets: np.ndarray, initial_exponents, language: Language):
    """Flat sequences -> (N, M, M) approximations (colour: luma and chroma, as `encode` takes).
    Any prefix of a valid sequence decodes (to a coarser approximation); a token that the grammar
    does not allow raises ValueError."""
    tokens, offsets, e0 = language.check_sequences(tokens, offsets, initial_exponents)
    state = grammar.new_state(language, 1)
    out = np.zeros((len(e0), language.n_coefficients))
    j, i, reason = _decode_batch(language.table, *state, tokens, offsets, e0, language.method_id,
                                 int(language.plane0_uncovers), out)
    if j >= 0:
        _raise_decode_error(tokens[offsets[j]:offsets[j + 1]], int(e0[j]), i, reason, language, j)
    return language.from_flat(out)


def decode(tokens, initial_exponent: int, language: Language):
    """One sequence (or a prefix of one) -> its approximation: (M, M) (colour: luma (M, M) and
    chroma (2, M', M'))."""
    tokens = np.asarray(tokens)
    out = decode_batch(tokens.reshape(-1) if tokens.ndim == 1 else tokens, [0, tokens.size],
                       [initial_exponent], language)
    return (out[0][0], out[1][0]) if language.colour else out[0]


def decode_after_each_plane(encoded: Encoded, j: int, language: Language, planes: int):
    """Sequence j decoded from its prefix up to the end of bit-plane 0, 1, ... (the coarse-to-fine
    view; planes past the sequence's last repeat its full decode): (planes, M, M) approximations
    (colour: luma and chroma, as `encode` takes)."""
    seq = slice(encoded.offsets[j], encoded.offsets[j + 1])
    tokens, bp = encoded.tokens[seq], encoded.bp[seq]
    prefixes = [tokens[bp <= plane] for plane in range(planes)]
    offsets = np.concatenate([[0], np.cumsum([len(s) for s in prefixes])])
    return decode_batch(np.concatenate(prefixes), offsets, np.repeat(encoded.initial_exponents[j], planes), language)


def _raise_decode_error(sequence, e0, index, reason, language, j):
    scan = grammar.BatchScan(language, [e0], canonical=False)
    for token in sequence[:index]:
        scan.step([token])
    where = f"sequence {j}, position {index}" if j else f"position {index}"
    token = int(sequence[index])
    name = grammar.TOKEN_NAMES[token] if 0 <= token < grammar.VOCAB_SIZE else "no such id"
    if reason == 1:
        raise ValueError(f"{where}: token {token} ({name}) follows the end of the last bit-plane "
                         f"({language.planes(e0)} planes for e0={e0})")
    valid = ", ".join(f"{t} ({grammar.TOKEN_NAMES[t]})" for t in grammar.mask_to_ids(scan.masks[0]))
    raise ValueError(f"{where} (bp={scan.bp[0]}, i1={scan.i1[0]}, i2={scan.i2[0]}): token {token} "
                     f"({name}) is not valid here; valid ids: {valid}")
