"""Generation: decoding settings, the guidance formula both model families use, and the
continuous-batching engine that samples token languages with a KV-cached transformer.

Each step the language's scan gives every sequence the position (bp, i1, i2) of its next token and
the ids valid there (canonical form); the model's logits for the other ids are set to -inf, so
every sequence decodes, and a sequence ends exactly when its scan does.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from transformers.generation.logits_process import (
    LogitsProcessorList,
    TemperatureLogitsWarper,
    TopKLogitsWarper,
    TopPLogitsWarper,
)

from .devices import Distributed
from .formats import concatenate
from .languages.encoded import Encoded
from .models.transformer.network import Decoder, WaveletGPT, masked_logits
from .progress import log


@dataclass(frozen=True)
class Decoding:
    """How the next token is chosen from the masked logits."""

    temperature: float = 1.0  # 0: greedy
    top_k: int = 0  # 0: off
    top_p: float = 1.0  # 1: off
    cfg_scale: float = 1.0  # 1: no classifier-free guidance
    diffusion_steps: int = 50  # sampler steps (diffusion models only)

    def warpers(self) -> LogitsProcessorList:
        chosen = LogitsProcessorList()
        if self.temperature not in (0.0, 1.0):
            chosen.append(TemperatureLogitsWarper(self.temperature))
        if self.top_k > 0:
            chosen.append(TopKLogitsWarper(self.top_k))
        if self.top_p < 1.0:
            chosen.append(TopPLogitsWarper(self.top_p))
        return chosen


def uniforms(seed: int, sequence_ids: np.ndarray, positions: np.ndarray) -> np.ndarray:
    """A counter-based random number in [0, 1) for each (seed, sequence, position) (splitmix64):
    every sequence draws from its own stream, whatever batch, slot or process samples it."""
    with np.errstate(over="ignore"):
        z = (np.full(len(sequence_ids), seed, np.uint64) * np.uint64(0x9E3779B97F4A7C15)
             + np.asarray(sequence_ids).astype(np.uint64) * np.uint64(0xD1B54A32D192ED03)
             + np.asarray(positions).astype(np.uint64) * np.uint64(0x8CB92BA72F3D8DD7))
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        z = z ^ (z >> np.uint64(31))
    return (z >> np.uint64(11)).astype(np.float64) * 2.0 ** -53


def choose(logits: torch.Tensor, valid: torch.Tensor, d: Decoding, draws: torch.Tensor) -> torch.Tensor:
    """Next token ids (B,) from logits (B, V), only ever among the valid ids; `draws` (B,) in
    [0, 1) pick from each row's distribution (inverse CDF)."""
    logits = masked_logits(logits.float(), valid)
    if d.temperature == 0:
        return logits.argmax(dim=-1)
    probs = d.warpers()(None, logits).softmax(dim=-1).double()
    cumulative = probs.cumsum(dim=-1)
    target = draws.double()[:, None] * cumulative[:, -1:]
    # The first id whose cumulative mass exceeds the draw (an id of zero mass never does); a draw
    # that rounding puts at the very top takes the last id with mass.
    chosen = torch.searchsorted(cumulative, target, right=True).squeeze(-1)
    ids = torch.arange(probs.shape[-1], device=probs.device)
    last = torch.where(probs > 0, ids, -1).amax(dim=-1)
    return torch.minimum(chosen, last)


@dataclass
class SamplingStats:
    """What a sampling run computed against what it kept (a guided pair of rows counts once)."""

    rows_computed: int = 0  # decoder rows, summed over steps
    tokens_kept: int = 0  # tokens the samples keep (generated, not prefilled)
    steps: int = 0
    cache_read: int = 0  # cached positions attended, summed over rows and steps (dense, masked)
    cache_needed: int = 0  # the positions each kept token's own prefix holds: what a ragged kernel reads

    @property
    def traffic_ratio(self) -> float:
        return self.rows_computed / max(1, self.tokens_kept)

    @property
    def cache_ratio(self) -> float:
        return self.cache_read / max(1, self.cache_needed)


def cache_capacity(model: WaveletGPT) -> int:
    """The KV cache a sample needs: the longest training sequence, rounded up to 64 (the
    decoder grows it for a longer sample)."""
    return 64 * max(1, -(-int(model.config.longest_sequence) // 64))


class _Host:
    """Host arrays for the device, copied in one (pinned, non-blocking on CUDA) transfer."""

    def __init__(self, device: torch.device):
        self.device, self.pin = device, device.type == "cuda"

    def __call__(self, *arrays: np.ndarray) -> list[torch.Tensor]:
        packed = torch.from_numpy(np.stack([np.asarray(a, np.int64) for a in arrays]))
        if self.pin:
            packed = packed.pin_memory()
        return list(packed.to(self.device, non_blocking=self.pin))


def guide(conditional: torch.Tensor, unconditional: torch.Tensor, scale: float) -> torch.Tensor:
    """Classifier-free guidance (Ho & Salimans): unconditional + scale * (conditional -
    unconditional). Scale 1 is the conditional prediction, 0 the unconditional one, above 1 it
    pushes away from the unconditional. The transformer guides its next-token logits (as
    log-probabilities would be: they differ by a per-row constant that the softmax removes),
    diffusion its noise predictions: both call this."""
    return unconditional + scale * (conditional - unconditional)


def guided_step(decoder: Decoder, prev, bp, i1, i2, e0, labels, null_class: int, scale: float,
                context=None, component=None) -> torch.Tensor:
    """Next-token logits (B, V) under guidance: the decoder's rows are the B sequences twice,
    first with their classes (conditional), then with the null class (unconditional)."""
    twice = [torch.cat([a, a]) for a in (prev, bp, i1, i2, e0)]
    context, component = (None if a is None else torch.cat([a, a]) for a in (context, component))
    logits = decoder.step(*twice, torch.cat([labels, torch.full_like(labels, null_class)]), context,
                          component).float()
    conditional, unconditional = logits.chunk(2)
    return guide(conditional, unconditional, scale)


class ContinuousBatch:
    """Samples sequences with `slots` decoder rows: when a row's sequence ends, the next pending
    sequence takes its slot (with its own cache length and positions), and once nothing is pending
    the finished rows are dropped, so the work follows the tokens kept rather than the longest
    sequence of a batch. Sequence j draws from its own random stream (seed, sequence_ids[j]).

    A run is: `admit` sequences into free slots (`prefill` those that start from a prefix), then
    `step` all live rows one token at a time, `retire` finished rows once nothing is pending."""

    def __init__(self, model: WaveletGPT, labels: np.ndarray, e0: np.ndarray, decoding: Decoding, seed: int,
                 sequence_ids: np.ndarray, slots: int, prefixes: Encoded | None, stats: SamplingStats):
        self.model, self.config, self.decoding, self.seed = model, model.config, decoding, seed
        self.labels, self.e0, self.ids, self.prefixes, self.stats = labels, e0, sequence_ids, prefixes, stats
        self.device = next(model.parameters()).device
        self.to_device = _Host(self.device)
        self.guided = decoding.cfg_scale != 1.0 and self.config.condition == "class"
        self.language = model.language
        self.context = model.uses_context  # the model reads scan-state features of each next token
        self.component = model.uses_component  # ... and each next token's component (colour)
        width = min(slots, len(labels))
        self.slot_seq = np.full(width, -1)  # the sequence in each slot (-1: none)
        self.scan = self.language.scan(np.full(width, e0[0]))
        self.decoder = Decoder(model, 2 * width if self.guided else width, cache_capacity(model))
        self.prev = np.full(width, self.config.start_token)
        self.made = np.zeros(len(labels), dtype=np.int64)  # tokens of each sequence so far, prefix included
        self.records: list[tuple[np.ndarray, ...]] = []  # (sequence, position, token, bp, i1, i2, component) per step
        self.pending = 0  # the next sequence no slot has taken yet

    def _decoder_rows(self, rows: np.ndarray) -> np.ndarray:
        return np.concatenate([rows, rows + len(self.slot_seq)]) if self.guided else rows

    def admit(self, free: np.ndarray) -> None:
        """Give free slots the next pending sequences (prefilled where they have prefixes)."""
        n = len(self.labels)
        while len(free):
            count = min(len(free), n - self.pending)
            self.slot_seq[free[count:]] = -1
            if not count:
                return
            rows, seqs = free[:count], np.arange(self.pending, self.pending + count)
            self.pending += count
            self.slot_seq[rows] = seqs
            self.scan.restart(rows, self.e0[seqs])
            self.decoder.restart(self._decoder_rows(rows))
            self.prev[rows] = self.config.start_token
            if self.prefixes is not None:
                self.prefill(rows, seqs)
            free = rows[self.scan.done[rows]]  # a prefix that is already a whole sequence

    def prefill(self, rows: np.ndarray, seqs: np.ndarray) -> None:
        """Rows `rows` start from the prefixes of sequences `seqs`: the scan follows each prefix
        and one causal forward pass fills the rows' cache."""
        lengths = self.prefixes.lengths[seqs]
        rows, seqs, lengths = rows[lengths > 0], seqs[lengths > 0], lengths[lengths > 0]
        if not len(rows):
            return
        inputs = np.zeros((5, len(rows), int(lengths.max())), np.int64)
        if self.context:  # the features in front of every prefix token, padded like the inputs
            context = np.zeros((len(rows), int(lengths.max()), len(self.config.context_sizes)), np.int64)
            prefixes = self.prefixes.select(seqs)
            features = self.language.context(prefixes)
        for r, (slot, j) in enumerate(zip(rows, seqs)):
            part = slice(self.prefixes.offsets[j], self.prefixes.offsets[j + 1])
            tokens = self.prefixes.tokens[part].astype(np.int64)
            positions = (self.prefixes.bp[part], self.prefixes.i1[part], self.prefixes.i2[part],
                         self.prefixes.component[part])
            self.scan.advance(slot, tokens)
            self.records.append((np.full(len(tokens), j), np.arange(len(tokens)), tokens, *positions))
            inputs[0, r, 0], inputs[0, r, 1:len(tokens)] = self.config.start_token, tokens[:-1]
            inputs[1:, r, :len(tokens)] = positions
            if self.context:
                context[r, :len(tokens)] = features[prefixes.offsets[r]:prefixes.offsets[r + 1]]
            self.prev[slot] = tokens[-1]
        self.made[seqs] = lengths
        prev, bp, i1, i2, component = (torch.as_tensor(a, device=self.device) for a in inputs)
        component = component if self.component else None
        context = torch.as_tensor(context, device=self.device) if self.context else None
        e0, label = self.to_device(self.e0[seqs], self.labels[seqs])
        if self.guided:
            prev, bp, i1, i2, e0 = (torch.cat([a, a]) for a in (prev, bp, i1, i2, e0))
            context, component = (None if a is None else torch.cat([a, a]) for a in (context, component))
            label = torch.cat([label, torch.full_like(label, self.config.null_class)])
        self.decoder.prefill(torch.as_tensor(self._decoder_rows(rows), device=self.device), prev, bp, i1, i2, e0,
                             label, np.tile(lengths, 2 if self.guided else 1), context, component)

    def retire(self) -> None:
        """Once nothing is pending, drop the finished rows (when they are an eighth or more)."""
        live = self.slot_seq >= 0
        if self.pending < len(self.labels) or (~live).sum() * 8 < len(live):
            return
        keep = np.flatnonzero(live)
        self.scan.keep(keep)
        self.decoder.keep(self._decoder_rows(keep))
        self.slot_seq, self.prev = self.slot_seq[keep], self.prev[keep]

    def _logits(self, live: np.ndarray, seq: np.ndarray, bp, i1, i2, component) -> torch.Tensor:
        e0 = np.where(live, self.e0[seq], self.config.e0_min)
        inputs = self.to_device(self.prev, bp, i1, i2, e0, self.labels[seq])
        # A finished row's scan gives zeros: valid ids for an empty slot's ignored step.
        context = torch.as_tensor(self.language.scan_context(self.scan), device=self.device) if self.context else None
        component = torch.as_tensor(component, device=self.device) if self.component else None
        if self.guided:
            return guided_step(self.decoder, *inputs, self.config.null_class, self.decoding.cfg_scale, context,
                               component)
        return self.decoder.step(*inputs, context, component).float()

    def step(self) -> np.ndarray:
        """One token for every live row; returns the rows whose sequence has ended."""
        live = self.slot_seq >= 0
        seq = np.where(live, self.slot_seq, 0)
        bp, i1, i2, component = (np.where(live, a, 0) for a in (self.scan.bp, self.scan.i1, self.scan.i2,
                                                                 self.scan.component))
        self.stats.cache_read += len(live) * (int(self.decoder.host_lengths[:len(live)].max()) + 1)
        logits = self._logits(live, seq, bp, i1, i2, component)
        valid = torch.as_tensor(self.scan.valid(), device=self.device)
        valid[torch.as_tensor(~live, device=self.device)] = True  # anything for an empty slot
        draws = torch.as_tensor(uniforms(self.seed, self.ids[seq], self.made[seq]), device=self.device)
        token = choose(logits, valid, self.decoding, draws).cpu().numpy()
        rows = np.flatnonzero(live)
        sequences = self.slot_seq[rows]
        self.records.append((sequences, self.made[sequences], token[rows], bp[rows], i1[rows], i2[rows],
                             component[rows]))
        self.stats.rows_computed += len(live)
        self.stats.tokens_kept += len(rows)
        self.stats.cache_needed += int((self.made[sequences] + 1).sum())
        self.stats.steps += 1
        self.made[sequences] += 1
        self.scan.step(np.where(live, token, 0))
        self.prev = token
        return rows[self.scan.done[rows]]

    def run(self, progress: str = "") -> Encoded:
        n, finished, reported = len(self.labels), 0, 0
        self.admit(np.arange(len(self.slot_seq)))
        while (self.slot_seq >= 0).any():
            self.retire()
            done = self.step()
            if len(done):
                finished += len(done)
                self.admit(done)
                if progress and finished * 10 >= (reported + 1) * n:
                    reported = finished * 10 // n
                    log(f"{progress}: {finished}/{n} sequences")
        return _collect(self.records, self.made, self.e0)


@torch.no_grad()
def generate(model: WaveletGPT, labels: np.ndarray, e0: np.ndarray, d: Decoding, seed: int = 0,
             sequence_ids: np.ndarray | None = None, slots: int = 256, prefixes: Encoded | None = None,
             stats: SamplingStats | None = None, progress: str = "") -> Encoded:
    """Sample one sequence per (label, e0), flat in input order (positions included), with
    continuous batching over `slots` rows. Sequence j draws from its own random stream
    (seed, sequence_ids[j]): the result does not depend on `slots` or on the order of rows. With
    `prefixes`, sequence j starts from prefix j (its first tokens, in one forward pass) and the
    model writes the rest."""
    if len(labels) == 0:
        return _collect([], np.zeros(0, np.int64), np.zeros(0, np.int64))
    ids = np.arange(len(labels)) if sequence_ids is None else np.asarray(sequence_ids)
    batch = ContinuousBatch(model, np.asarray(labels), np.asarray(e0), d, seed, ids, slots, prefixes,
                            stats if stats is not None else SamplingStats())
    return batch.run(progress)


def _collect(records, lengths: np.ndarray, e0: np.ndarray) -> Encoded:
    """Per-step records (sequence, position, token, bp, i1, i2, component) -> flat sequences in
    sequence order."""
    columns = [np.concatenate([r[c] for r in records]) if records else np.zeros(0, np.int64) for c in range(7)]
    order = np.lexsort((columns[1], columns[0]))
    tokens = columns[2][order].astype(np.uint16)  # BPE ids may pass 255
    bp, i1, i2, component = (columns[c][order].astype(np.uint8) for c in range(3, 7))
    offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
    return Encoded(tokens, bp, i1, i2, offsets, np.asarray(e0).astype(np.int8), component)


def _in_row_order(parts: list[tuple[np.ndarray, Encoded]]) -> Encoded:
    """Batches generated for rows `rows` (any order, any rank) -> one Encoded in row order."""
    rows = np.concatenate([rows for rows, _ in parts])
    return concatenate([encoded for _, encoded in parts]).select(np.argsort(rows))


def class_list(classes, n_classes: int) -> list[int]:
    if classes == "all":
        return list(range(n_classes))
    bad = [c for c in classes if not 0 <= c < n_classes]
    if bad:
        raise ValueError(f"params.yaml: sample.classes has {bad}; the model knows classes 0..{n_classes - 1}")
    return list(classes)


def decoding_of(settings) -> Decoding:
    return Decoding(settings.temperature, settings.top_k, settings.top_p, settings.cfg_scale, settings.diffusion_steps)


def sample_rows(sampler, labels: np.ndarray, decoding: Decoding, seed: int, batch_size: int,
                dist: Distributed | None = None, progress: str = "", stats: SamplingStats | None = None,
                prefixes: Encoded | None = None) -> Encoded | None:
    """Samples for all labels through the sampler interface (each process its share under
    torchrun), row j from its own random stream (seed, j) and, with `prefixes`, continuing prefix
    j; the gathered sequences in label order on the main process, None on the others."""
    dist = dist or Distributed()
    mine = np.arange(dist.rank, len(labels), dist.world)
    parts = sampler.generate(labels, mine, decoding, seed, batch_size,
                             progress + (f" on rank {dist.rank}" if dist.world > 1 and progress else ""), stats,
                             prefixes)
    if dist.world > 1:
        gathered = [None] * dist.world if dist.is_main else None
        torch.distributed.gather_object(parts, gathered, dst=0)
        parts = [part for rank_parts in (gathered or []) for part in rank_parts]
    return _in_row_order(parts) if dist.is_main else None
