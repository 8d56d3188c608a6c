"""Byte-pair merges over the wavelet language (paper section 3.2.3): a larger vocabulary for
shorter sequences.

Merges are learned with HuggingFace `tokenizers` (BPE, no normalizer, no pre-tokenizer) on the
training split's sequences, each written as a string with one character per base id ("0".."7").
The tokenizer's ids 0..7 are the base ids themselves; every other id stands for its expansion,
a run of base ids.

The scan grammar stays the only judge of validity: a merged id is valid at a scan state exactly
when its expansion is a valid path of the grammar from that state (canonical form included), and
a plane or sequence ends inside it only where the grammar lets it (a finished scan accepts
nothing). `_walk` finds all valid ids at once by walking a trie of the expansions over copies of
the scan state, one copy per trie depth, pruned wherever the grammar refuses a base id: its cost
grows with the valid prefixes of the vocabulary, not with the vocabulary.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from functools import cached_property

import numpy as np
from numba import njit
from tokenizers import Tokenizer, models, trainers

from . import context, grammar
from .encoded import Encoded
from .grammar import (
    C_CURSOR,
    C_DONE,
    C_PLANE,
    T_COL,
    T_COMPONENT,
    T_ROW,
    VOCAB_SIZE,
    apply,
    reset,
    valid_mask,
)
from .wavelet import WaveletLanguage

BASE_ALPHABET = "".join(str(t) for t in range(VOCAB_SIZE))
MAX_VOCAB = 1 << 16  # ids are stored as uint16


def to_strings(tokens: np.ndarray, offsets: np.ndarray) -> list[str]:
    """Base sequences (flat, with offsets) -> one string per sequence, a character per id."""
    text = (np.asarray(tokens, np.uint8) + ord("0")).tobytes().decode("ascii")
    return [text[offsets[j]:offsets[j + 1]] for j in range(len(offsets) - 1)]


def learn(sequences: list[str], vocab_size: int) -> str:
    """BPE merges over base-id strings, up to `vocab_size` ids in all: the tokenizer as JSON."""
    if not VOCAB_SIZE < vocab_size <= MAX_VOCAB:
        raise ValueError(f"BPE vocabulary size {vocab_size} is outside {VOCAB_SIZE + 1}..{MAX_VOCAB}")
    tokenizer = Tokenizer(models.BPE())
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, initial_alphabet=list(BASE_ALPHABET),
                                  special_tokens=[], show_progress=False)
    tokenizer.train_from_iterator(sequences, trainer)
    return json.dumps(json.loads(tokenizer.to_str()))  # the form a description round-trips to


@dataclass(frozen=True)
class Vocabulary:
    """A learned tokenizer as arrays the kernels read: each id's expansion (flat, with offsets)
    and the trie of expansions (node 0 is the root)."""

    expansion: np.ndarray  # int64 base ids of every id's expansion, concatenated
    expansion_offsets: np.ndarray  # int64, vocab + 1
    children: np.ndarray  # int64 (nodes, VOCAB_SIZE): child of a node by base id, or -1
    token_at: np.ndarray  # int64 (nodes,): the id whose expansion ends at a node, or -1
    has_children: np.ndarray  # bool (nodes,)
    depth: int  # the longest expansion

    @classmethod
    def of(cls, tokenizer_json: str) -> "Vocabulary":
        vocab = json.loads(tokenizer_json)["model"]["vocab"]
        if sorted(vocab.values()) != list(range(len(vocab))):
            raise ValueError("the tokenizer's ids are not 0..vocabulary size - 1")
        for t, char in enumerate(BASE_ALPHABET):
            if vocab.get(char) != t:
                raise ValueError(f"the tokenizer gives base id {t} ({char!r}) the id {vocab.get(char)}, not {t}")
        strings = sorted(vocab, key=vocab.get)
        if any(set(s) - set(BASE_ALPHABET) for s in strings):
            raise ValueError(f"the tokenizer has ids that are not runs of the base ids {BASE_ALPHABET}")
        lengths = np.array([len(s) for s in strings], np.int64)
        expansion = np.frombuffer("".join(strings).encode("ascii"), np.uint8).astype(np.int64) - ord("0")
        children, token_at = [[-1] * VOCAB_SIZE], [-1]
        for token, s in enumerate(strings):
            node = 0
            for char in s:
                t = ord(char) - ord("0")
                if children[node][t] < 0:
                    children[node][t] = len(children)
                    children.append([-1] * VOCAB_SIZE)
                    token_at.append(-1)
                node = children[node][t]
            token_at[node] = token
        children = np.array(children, np.int64)
        return cls(expansion, np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64), children,
                   np.array(token_at, np.int64), (children >= 0).any(axis=1), int(lengths.max()))

    @property
    def size(self) -> int:
        return len(self.expansion_offsets) - 1

    @property
    def lengths(self) -> np.ndarray:
        return np.diff(self.expansion_offsets)

    def scratch(self, language: grammar.Language) -> tuple[np.ndarray, ...]:
        """Work arrays for `_walk`: a scan state per trie depth and the walk's stack."""
        approx, marks, counters = grammar.new_state(language, self.depth + 1)
        stack = np.zeros((2, self.depth + 1), np.int64)
        # int16 marks (flags, planes, subtree counts all fit) make the per-depth copies 4x cheaper.
        return approx, marks.astype(np.int16), counters, stack


# ----- compiled kernels -----

@njit(cache=True, inline="always")
def _enter(table, s_marks, s_counters, depth, node, canonical, children, token_at, has_children, out):
    """Mark the ids that end one base id below `node` (valid from the state in row `depth`);
    the bitmask of base ids that lead on to longer expansions."""
    mask = valid_mask(table, s_marks, s_counters, depth, canonical)
    onward = 0
    for t in range(VOCAB_SIZE):
        if (mask >> t) & 1:
            child = children[node, t]
            if child >= 0:
                if token_at[child] >= 0:
                    out[token_at[child]] = True
                if has_children[child]:
                    onward |= 1 << t
    return onward


@njit(cache=True)
def _walk(table, marks, counters, b, canonical, children, token_at, has_children,
          s_approx, s_marks, s_counters, stack, out):
    """Set out[id] for every id whose expansion is a valid path from scan state b.

    Depth-first over the trie with the scan state of each open node in a row of the scratch
    state; a node's last onward branch continues in its own row (no copy), so a chain of
    single-child nodes costs no copies at all. (The approximation is never copied: no validity
    depends on it.)"""
    node_at, onward_at = stack[0], stack[1]
    s_marks[0] = marks[b]
    s_counters[0] = counters[b]
    depth = 0
    node_at[0] = 0
    onward_at[0] = _enter(table, s_marks, s_counters, 0, 0, canonical, children, token_at, has_children, out)
    while depth >= 0:
        onward = onward_at[depth]
        if onward == 0:
            depth -= 1
            continue
        t = 0
        while not (onward >> t) & 1:
            t += 1
        onward_at[depth] = onward & ~(1 << t)
        child = children[node_at[depth], t]
        if onward_at[depth] != 0:  # siblings still need this row's state: branch into the next row
            s_marks[depth + 1] = s_marks[depth]
            s_counters[depth + 1] = s_counters[depth]
            depth += 1
        apply(table, s_approx, s_marks, s_counters, depth, t)
        node_at[depth] = child
        onward_at[depth] = _enter(table, s_marks, s_counters, depth, child, canonical, children, token_at,
                                  has_children, out)


@njit(cache=True, inline="always")
def _apply_expansion(table, approx, marks, counters, b, token, expansion, expansion_offsets, canonical):
    """Apply one merged id's expansion to state b; False if the grammar refuses any of it."""
    if token < 0 or token >= len(expansion_offsets) - 1:
        return False
    for e in range(expansion_offsets[token], expansion_offsets[token + 1]):
        t = expansion[e]
        if not (valid_mask(table, marks, counters, b, canonical) >> t) & 1:
            return False
        apply(table, approx, marks, counters, b, t)
    return True


@njit(cache=True)
def _sequences(table, approx, marks, counters, tokens, offsets, e0, bp, i1, i2, component, method, plane0_uncovers,
               expansion, expansion_offsets, children, token_at, has_children,
               s_approx, s_marks, s_counters, stack, valid):
    """Check merged sequences (and, if `valid` has a row per token, fill each row with the ids
    valid in front of that token). Returns (-1, 0, 0), or (sequence, index, reason): 1 an id whose
    expansion the grammar (canonical form) refuses there, 2 a position that is not the scan's at
    the id's first base token, 3 a sequence that ends before its last plane does."""
    walk = valid.shape[0] > 0
    positions = len(bp) > 0
    for j in range(len(e0)):
        reset(table, approx, marks, counters, 0, e0[j], method, plane0_uncovers)
        for i in range(offsets[j], offsets[j + 1]):
            k = counters[0, C_CURSOR]
            if positions and not counters[0, C_DONE] and (
                    bp[i] != counters[0, C_PLANE] or i1[i] != table[T_ROW, k] or i2[i] != table[T_COL, k]
                    or component[i] != table[T_COMPONENT, k]):
                return j, i - offsets[j], 2
            if walk and not counters[0, C_DONE]:
                _walk(table, marks, counters, 0, True, children, token_at, has_children,
                      s_approx, s_marks, s_counters, stack, valid[i])
            if not _apply_expansion(table, approx, marks, counters, 0, tokens[i], expansion, expansion_offsets, True):
                return j, i - offsets[j], 1
        if not counters[0, C_DONE]:
            return j, offsets[j + 1] - offsets[j], 3
    return -1, 0, 0


@njit(cache=True)
def _valid_rows(table, marks, counters, canonical, children, token_at, has_children,
                s_approx, s_marks, s_counters, stack, out):
    for b in range(len(out)):
        if not counters[b, C_DONE]:
            _walk(table, marks, counters, b, canonical, children, token_at, has_children,
                  s_approx, s_marks, s_counters, stack, out[b])


@njit(cache=True)
def _step_rows(table, approx, marks, counters, tokens, expansion, expansion_offsets, canonical):
    """Apply each unfinished row's merged id; -1, or the first row whose id is refused."""
    for b in range(len(tokens)):
        if counters[b, C_DONE]:
            continue
        if not _apply_expansion(table, approx, marks, counters, b, tokens[b], expansion, expansion_offsets, canonical):
            return b
    return -1


@njit(cache=True)
def _advance_row(table, approx, marks, counters, b, tokens, expansion, expansion_offsets, canonical):
    for i in range(len(tokens)):
        if counters[b, C_DONE] or not _apply_expansion(table, approx, marks, counters, b, tokens[i], expansion,
                                                       expansion_offsets, canonical):
            return i
    return -1


# ----- what the BPE language calls -----

def check_sequences(tokens, offsets, initial_exponents, positions, language: grammar.Language,
                    vocabulary: Vocabulary, with_valid: bool) -> np.ndarray:
    """Merged sequences checked against the grammar (and their positions, if given, against the
    scan's at each id's first base token); with `with_valid`, the (tokens, vocabulary) bool ids
    valid in front of every token. ValueError names the first sequence that is not valid."""
    tokens, offsets, e0 = language.check_sequences(tokens, offsets, initial_exponents)
    bp, i1, i2, component = (np.zeros(0, np.int64),) * 4 if positions is None else (np.asarray(a, np.int64) for a in positions)
    valid = np.zeros((len(tokens) if with_valid else 0, vocabulary.size), np.bool_)
    j, index, reason = _sequences(
        language.table, *grammar.new_state(language, 1), tokens, offsets, e0, bp, i1, i2, component, language.method_id,
        int(language.plane0_uncovers), vocabulary.expansion, vocabulary.expansion_offsets,
        vocabulary.children, vocabulary.token_at, vocabulary.has_children, *vocabulary.scratch(language), valid)
    if j >= 0:
        where = offsets[j] + index
        problem = {1: f"token {index} (id {tokens[where] if where < len(tokens) else None}) does not expand to a "
                      f"valid path of the grammar there (canonical form)",
                   2: f"token {index} has position (bp, i1, i2, component) = ({bp[where] if len(bp) else None}, "
                      f"{i1[where] if len(i1) else None}, {i2[where] if len(i2) else None}, "
                      f"{component[where] if len(component) else None}), not the scan's",
                   3: f"it ends after {index} tokens, before its last bit-plane does"}[reason]
        raise ValueError(f"sequence {j}: {problem}")
    return valid


@njit(cache=True)
def _positions(table, approx, marks, counters, tokens, offsets, e0, method, plane0_uncovers, bp, i1, i2, component):
    """The scan's position of every base token; -1, or the sequence of the first refused token."""
    for j in range(len(e0)):
        reset(table, approx, marks, counters, 0, e0[j], method, plane0_uncovers)
        for i in range(offsets[j], offsets[j + 1]):
            if not (valid_mask(table, marks, counters, 0, True) >> tokens[i]) & 1:
                return j
            k = counters[0, C_CURSOR]
            bp[i], i1[i], i2[i], component[i] = counters[0, C_PLANE], table[T_ROW, k], table[T_COL, k], table[T_COMPONENT, k]
            apply(table, approx, marks, counters, 0, tokens[i])
    return -1


def base_positions(tokens, offsets, initial_exponents, language: grammar.Language) -> tuple[np.ndarray, ...]:
    """(bp, i1, i2, component) uint8 of every token of base sequences (or their prefixes)."""
    tokens, offsets, e0 = language.check_sequences(tokens, offsets, initial_exponents)
    bp, i1, i2, component = (np.zeros(len(tokens), np.uint8) for _ in range(4))
    bad = _positions(language.table, *grammar.new_state(language, 1), tokens, offsets, e0, language.method_id,
                     int(language.plane0_uncovers), bp, i1, i2, component)
    if bad >= 0:
        raise ValueError(f"sequence {bad}: its expansion is not a valid path of the grammar (canonical form)")
    return bp, i1, i2, component


class BatchScan:
    """B scan states that take merged ids: the base grammar's scan (positions, `done`) with
    masks over the whole vocabulary; the same interface as `grammar.BatchScan`."""

    def __init__(self, language: grammar.Language, vocabulary: Vocabulary, initial_exponents):
        self.base = grammar.BatchScan(language, initial_exponents)
        self.vocabulary = vocabulary
        self._scratch = vocabulary.scratch(language)

    bp = property(lambda self: self.base.bp)
    i1 = property(lambda self: self.base.i1)
    i2 = property(lambda self: self.base.i2)
    component = property(lambda self: self.base.component)
    done = property(lambda self: self.base.done)

    def valid(self) -> np.ndarray:
        """(B, vocabulary) bool: the ids valid in front of each sequence's next token."""
        v, base = self.vocabulary, self.base
        out = np.zeros((len(base.done), v.size), np.bool_)
        _valid_rows(base.language.table, base.state.marks, base.state.counters, base.canonical, v.children,
                    v.token_at, v.has_children, *self._scratch, out)
        return out

    def step(self, tokens) -> None:
        tokens = np.asarray(tokens, dtype=np.int64).reshape(-1)
        if len(tokens) != len(self.done):
            raise ValueError(f"{len(tokens)} tokens for {len(self.done)} sequences")
        bad = _step_rows(self.base.language.table, *self.base.state, tokens, self.vocabulary.expansion,
                         self.vocabulary.expansion_offsets, self.base.canonical)
        self.base.observe()
        if bad >= 0:
            raise ValueError(f"sequence {bad}: id {tokens[bad]} does not expand to a valid path of the grammar "
                             f"at (bp={self.bp[bad]}, i1={self.i1[bad]}, i2={self.i2[bad]})")

    def restart(self, rows, initial_exponents) -> None:
        self.base.restart(rows, initial_exponents)

    def advance(self, row: int, tokens) -> None:
        tokens = np.asarray(tokens, dtype=np.int64).reshape(-1)
        if not 0 <= row < len(self.done):
            raise ValueError(f"row {row} of {len(self.done)} states")
        bad = _advance_row(self.base.language.table, *self.base.state, row, tokens, self.vocabulary.expansion,
                           self.vocabulary.expansion_offsets, self.base.canonical)
        self.base.observe()
        if bad >= 0:
            raise ValueError(f"row {row}: prefix token {bad} ({tokens[bad]}) is not valid there")

    def keep(self, rows) -> None:
        self.base.keep(rows)


@dataclass(frozen=True)
class BPELanguage:
    """The wavelet language `base` with byte-pair merges: `tokenizer` is the learned HuggingFace
    tokenizer (JSON) whose ids 0..7 are the base ids and whose other ids stand for runs of them.
    A merged token sits where its first base token does; the grammar judges its whole expansion."""

    base: WaveletLanguage
    tokenizer: str

    family = "bpe"
    bit_planes = True
    has_context = True

    @cached_property
    def vocabulary(self) -> Vocabulary:
        return Vocabulary.of(self.tokenizer)

    @cached_property
    def _tokenizer(self) -> Tokenizer:
        return Tokenizer.from_str(self.tokenizer)

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
    colour = property(lambda self: self.base.colour)
    chroma = property(lambda self: self.base.chroma)
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
        return cls(base, learn(to_strings(encoded.tokens, encoded.offsets), vocab_size))

    # ----- images <-> sequences -----

    def merge(self, encoded: Encoded) -> Encoded:
        """Base sequences -> the tokenizer's merged sequences (positions of each first base token)."""
        merged = self._tokenizer.encode_batch(to_strings(encoded.tokens, encoded.offsets))
        ids = [np.asarray(m.ids, np.int64) for m in merged]
        lengths = np.array([len(i) for i in ids], np.int64)
        tokens = np.concatenate(ids) if ids else np.zeros(0, np.int64)
        offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
        # The expansions, concatenated, are the base tokens: a merged token's first base token is
        # the sum of the spans before it.
        spans = self.vocabulary.lengths[tokens]
        firsts = np.cumsum(spans) - spans
        return Encoded(tokens.astype(np.uint16), encoded.bp[firsts], encoded.i1[firsts], encoded.i2[firsts],
                       offsets, encoded.initial_exponents, encoded.component[firsts])

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
        bp, i1, i2, component = base_positions(base_tokens, offsets, encoded.initial_exponents, self.base.grammar)
        return Encoded(base_tokens, bp, i1, i2, offsets, encoded.initial_exponents, component)

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
        return check_sequences(encoded.tokens, encoded.offsets, encoded.initial_exponents,
                                   (encoded.bp, encoded.i1, encoded.i2, encoded.component), self.base.grammar,
                                   self.vocabulary,
                                   with_valid)

    def check(self, encoded: Encoded) -> None:
        self._sequences(encoded, with_valid=False)

    def valid_ids(self, encoded: Encoded) -> np.ndarray:
        return self._sequences(encoded, with_valid=True)

    def scan(self, initial_exponents) -> BatchScan:
        return BatchScan(self.base.grammar, self.vocabulary, initial_exponents)

    def context(self, encoded: Encoded) -> np.ndarray:
        """(tokens, 4): a merged token takes the scan-state features of its first base token."""
        spans = self.vocabulary.lengths[np.asarray(encoded.tokens, np.int64)]
        return self.base.context(self.expand(encoded))[np.cumsum(spans) - spans]

    def scan_context(self, scan: BatchScan) -> np.ndarray:
        return context.of_scan(scan.base)

    def artifacts(self) -> dict[str, str]:
        """The tokenizer, loadable with `tokenizers.Tokenizer.from_file`."""
        return {"tokenizer.json": self.tokenizer}
