"""Stage `sample`: generate images by sampling the token language token by token.

Each step the language's scan gives every sequence the position (bp, i1, i2) of its next token and
the ids valid there (canonical form); the model's logits for the other ids are set to -inf, so
every sequence decodes, and a sequence ends exactly when its scan does. The whole batch moves
together: one transformer step with a preallocated KV cache and one batched grammar step per
token. Classes are conditioned on, with optional classifier-free guidance; each sample's initial
exponent e0 is drawn from its class's training distribution, stored with the model. Temperature,
top-k, top-p and guidance are transformers' logits processors.

    python -m pipeline sample                           # device auto
    torchrun --nproc-per-node 4 -m pipeline sample      # each rank samples its share
"""
from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from transformers.generation.logits_process import (ClassifierFreeGuidanceLogitsProcessor, LogitsProcessorList,
                                                    TemperatureLogitsWarper, TopKLogitsWarper, TopPLogitsWarper)

from . import figures
from .coder import Encoded
from .devices import Distributed, resolve_device
from .formats import DIFFUSION_MARKER, concatenate, write_samples
from .io import atomic_dir, write_json
from .model import Decoder, WaveletGPT, masked_logits
from .params import Params
from .progress import log

PARAMS = ("profile", "sample")
PROGRESSIVE_EXAMPLES = 4


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


def draw_initial_exponents(model: WaveletGPT, labels: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """e0 per sample from its class's training counts (all classes pooled for an unseen class)."""
    counts = model.config.initial_exponent_counts
    pooled: dict[str, int] = {}
    for per_class in counts.values():
        for e, n in per_class.items():
            pooled[e] = pooled.get(e, 0) + n
    e0 = np.empty(len(labels), dtype=np.int64)
    for label in np.unique(labels):
        table = counts.get(str(int(label)), pooled)
        values = np.array([int(e) for e in table])
        weights = np.array(list(table.values()), dtype=np.float64)
        where = labels == label
        e0[where] = rng.choice(values, size=int(where.sum()), p=weights / weights.sum())
    return e0


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


@torch.no_grad()
def generate(model: WaveletGPT, labels: np.ndarray, e0: np.ndarray, d: Decoding, seed: int = 0,
             sequence_ids: np.ndarray | None = None, slots: int = 256, prefixes: Encoded | None = None,
             stats: SamplingStats | None = None, progress: str = "") -> Encoded:
    """Sample one sequence per (label, e0), flat in input order (positions included).

    Continuous batching: `slots` rows decode together; when a row's sequence ends the next
    pending sequence takes its slot (with its own cache length and positions), and once nothing
    is pending the finished rows are dropped, so the work follows the tokens kept rather than
    the longest sequence of a batch. Sequence j draws from its own random stream
    (seed, sequence_ids[j]): the result does not depend on `slots` or on the order of rows.
    With `prefixes`, sequence j starts from prefix j (its first tokens, in one forward pass) and
    the model writes the rest.
    """
    n = len(labels)
    ids = np.arange(n) if sequence_ids is None else np.asarray(sequence_ids)
    stats = stats if stats is not None else SamplingStats()
    if n == 0:
        return _collect([], np.zeros(0, np.int64), np.zeros(0, np.int64))
    device = next(model.parameters()).device
    to_device = _Host(device)
    config, language = model.config, model.language
    guided = d.cfg_scale != 1.0 and config.condition == "class"
    guidance = ClassifierFreeGuidanceLogitsProcessor(d.cfg_scale) if guided else None
    width = min(slots, n)
    slot_seq = np.full(width, -1)
    scan = language.scan(np.full(width, e0[0] if n else 0))
    decoder = Decoder(model, 2 * width if guided else width, cache_capacity(model))
    prev = np.full(width, config.start_token)
    made = np.zeros(n, dtype=np.int64)  # tokens of each sequence so far, prefix included
    records: list[tuple[np.ndarray, ...]] = []
    waiting = [0]  # the next sequence no slot has taken yet
    finished, reported = 0, 0

    def decoder_rows(rows: np.ndarray) -> np.ndarray:
        return np.concatenate([rows, rows + len(slot_seq)]) if guided else rows

    def start(free: np.ndarray) -> None:
        """Give free slots the next pending sequences (prefilled where they have prefixes)."""
        while len(free):
            count = min(len(free), n - waiting[0])
            slot_seq[free[count:]] = -1
            if not count:
                return
            rows, seqs = free[:count], np.arange(waiting[0], waiting[0] + count)
            waiting[0] += count
            slot_seq[rows] = seqs
            scan.restart(rows, e0[seqs])
            decoder.restart(decoder_rows(rows))
            prev[rows] = config.start_token
            if prefixes is not None:
                _prefill(rows, seqs)
            free = rows[scan.done[rows]]  # a prefix that is already a whole sequence

    def _prefill(rows: np.ndarray, seqs: np.ndarray) -> None:
        lengths = prefixes.lengths[seqs]
        rows, seqs, lengths = rows[lengths > 0], seqs[lengths > 0], lengths[lengths > 0]
        if not len(rows):
            return
        longest = int(lengths.max())
        inputs = np.zeros((4, len(rows), longest), np.int64)
        for r, (slot, j) in enumerate(zip(rows, seqs)):
            part = slice(prefixes.offsets[j], prefixes.offsets[j + 1])
            tokens = prefixes.tokens[part].astype(np.int64)
            scan.advance(slot, tokens)
            records.append((np.full(len(tokens), j), np.arange(len(tokens)), tokens, prefixes.bp[part],
                            prefixes.i1[part], prefixes.i2[part]))
            inputs[0, r, 0], inputs[0, r, 1:len(tokens)] = config.start_token, tokens[:-1]
            inputs[1:, r, :len(tokens)] = prefixes.bp[part], prefixes.i1[part], prefixes.i2[part]
            prev[slot] = tokens[-1]
        made[seqs] = lengths
        prev_t, bp_t, i1_t, i2_t = (torch.as_tensor(a, device=device) for a in inputs)
        e0_t, label_t = to_device(e0[seqs], labels[seqs])
        if guided:
            prev_t, bp_t, i1_t, i2_t, e0_t = (torch.cat([a, a]) for a in (prev_t, bp_t, i1_t, i2_t, e0_t))
            label_t = torch.cat([label_t, torch.full_like(label_t, config.null_class)])
        decoder.prefill(torch.as_tensor(decoder_rows(rows), device=device), prev_t, bp_t, i1_t, i2_t, e0_t,
                        label_t, np.tile(lengths, 2 if guided else 1))

    start(np.arange(width))
    while (slot_seq >= 0).any():
        live = slot_seq >= 0
        if waiting[0] == n and (~live).sum() * 8 >= len(live):  # nothing pending: drop the finished rows
            keep = np.flatnonzero(live)
            rows = decoder_rows(keep)
            scan.keep(keep)
            decoder.keep(rows)
            slot_seq, prev = slot_seq[keep], prev[keep]
            live = live[keep]
        seq = np.where(live, slot_seq, 0)
        bp, i1, i2 = (np.where(live, a, 0) for a in (scan.bp, scan.i1, scan.i2))
        e0_slots = np.where(live, e0[seq], config.e0_min)
        prev_t, bp_t, i1_t, i2_t, e0_t, label_t = to_device(prev, bp, i1, i2, e0_slots, labels[seq])
        if guided:
            prev_t, bp_t, i1_t, i2_t, e0_t = (torch.cat([a, a]) for a in (prev_t, bp_t, i1_t, i2_t, e0_t))
            label_t = torch.cat([label_t, torch.full_like(label_t, config.null_class)])
        stats.cache_read += len(live) * (int(decoder.host_lengths[:len(live)].max()) + 1)
        logits = decoder.step(prev_t, bp_t, i1_t, i2_t, e0_t, label_t).float()
        if guided:
            logits = guidance(prev_t[:len(live), None], logits)
        valid = torch.as_tensor(scan.valid(), device=device)
        valid[torch.as_tensor(~live, device=device)] = True  # anything for an empty slot
        draws = torch.as_tensor(uniforms(seed, ids[seq], made[seq]), device=device)
        token = choose(logits, valid, d, draws).cpu().numpy()
        rows = np.flatnonzero(live)
        records.append((slot_seq[rows], made[slot_seq[rows]], token[rows], bp[rows], i1[rows], i2[rows]))
        stats.rows_computed += len(live)
        stats.tokens_kept += len(rows)
        stats.cache_needed += int((made[slot_seq[rows]] + 1).sum())
        stats.steps += 1
        made[slot_seq[rows]] += 1
        scan.step(np.where(live, token, 0))
        prev = token
        done = rows[scan.done[rows]]
        if len(done):
            finished += len(done)
            start(done)
            if progress and finished * 10 >= (reported + 1) * n:
                reported = finished * 10 // n
                log(f"{progress}: {finished}/{n} sequences")
    return _collect(records, made, e0)


def _collect(records, lengths: np.ndarray, e0: np.ndarray) -> Encoded:
    """Per-step records (sequence, position, token, bp, i1, i2) -> flat sequences in sequence order."""
    columns = [np.concatenate([r[c] for r in records]) if records else np.zeros(0, np.int64) for c in range(6)]
    order = np.lexsort((columns[1], columns[0]))
    tokens = columns[2][order].astype(np.uint16)  # BPE ids may pass 255
    bp, i1, i2 = (columns[c][order].astype(np.uint8) for c in range(3, 6))
    offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
    return Encoded(tokens, bp, i1, i2, offsets, np.asarray(e0).astype(np.int8))


def _in_row_order(parts: list[tuple[np.ndarray, Encoded]]) -> Encoded:
    """Batches generated for rows `rows` (any order, any rank) -> one Encoded in row order."""
    rows = np.concatenate([rows for rows, _ in parts])
    return concatenate([encoded for _, encoded in parts]).select(np.argsort(rows))


def _tile(images: np.ndarray, columns: int) -> np.ndarray:
    """(N, H, W) -> (rows, columns, H, W), blank cells after the last image."""
    rows = -(-len(images) // columns)
    cells = np.zeros((rows * columns, *images.shape[1:]))
    cells[:len(images)] = images
    return cells.reshape(rows, columns, *images.shape[1:])


def class_list(classes, n_classes: int) -> list[int]:
    if classes == "all":
        return list(range(n_classes))
    bad = [c for c in classes if not 0 <= c < n_classes]
    if bad:
        raise ValueError(f"params.yaml: sample.classes has {bad}; the model knows classes 0..{n_classes - 1}")
    return list(classes)


def sample_figures(sampler, encoded: Encoded, labels: np.ndarray, images: np.ndarray,
                   classes: list[int], per_class: int, folder: Path) -> None:
    by_class = images.reshape(len(classes), per_class, *images.shape[1:]) / 255.0
    for label, class_images in zip(classes, by_class):
        figures.image_grid(_tile(class_images, 10), folder / f"class_{label}.png",
                           title=f"class {label}: {per_class} samples")
    figures.image_grid(by_class[:, :10], folder / "overview.png", [str(label) for label in classes],
                       title="Samples (rows: classes)")
    if not sampler.autoregressive:
        return
    # One sample of each of a few classes, coarse to fine, with where each stage's tokens sit.
    shown = np.array(classes)[np.linspace(0, len(classes) - 1, min(PROGRESSIVE_EXAMPLES, len(classes))).astype(int)]
    picks = [int(np.flatnonzero(labels == label)[0]) for label in shown]
    figures.progressive_figure(
        sampler.language, encoded, picks, folder / "progressive.png",
        [f"class {labels[j]}\n{encoded.lengths[j]} tok" for j in picks],
        "Coarse-to-fine generation: image after each stage, and that stage's token positions",
        show_positions=True)


class TransformerSampler:
    """Autoregressive sampling of a trained WaveletGPT, grammar-constrained."""

    autoregressive = True

    def __init__(self, model: WaveletGPT):
        self.model = model
        self.language = model.language
        self.n_classes = model.config.n_classes
        self.conditional = model.config.condition == "class"

    def generate(self, labels: np.ndarray, rows: np.ndarray, decoding: Decoding, seed: int, batch_size: int,
                 progress: str = "", stats: SamplingStats | None = None) -> list[tuple[np.ndarray, Encoded]]:
        """Sequences for labels[rows], `batch_size` decoding together. Each row's e0 (drawn from
        seed and all labels) and random stream depend on the row only, not on which rows a
        process samples or how many at a time."""
        e0 = draw_initial_exponents(self.model, labels, np.random.default_rng(seed))
        encoded = generate(self.model, labels[rows], e0[rows], decoding, seed, sequence_ids=rows, slots=batch_size,
                           stats=stats, progress=progress)
        return [(rows, encoded)]


def load_sampler(model_dir: str | Path, device: torch.device):
    """The sampler for what the train stage saved in model_dir (a transformer or a diffusion model)."""
    if Path(model_dir, DIFFUSION_MARKER).is_file():
        from .diffusion import DiffusionSampler  # diffusers is imported only for a diffusion model

        return DiffusionSampler(Path(model_dir), device)
    model = WaveletGPT.load(model_dir).to(device).eval()
    # On CUDA the decoder runs in bf16 throughout (weights cast once, no per-step autocast).
    return TransformerSampler(model.to(torch.bfloat16) if device.type == "cuda" else model)


def decoding_of(settings) -> Decoding:
    return Decoding(settings.temperature, settings.top_k, settings.top_p, settings.cfg_scale, settings.diffusion_steps)


def sample_rows(sampler, labels: np.ndarray, decoding: Decoding, seed: int, batch_size: int,
                dist: Distributed | None = None, progress: str = "", stats: SamplingStats | None = None) -> Encoded | None:
    """Samples for all labels (each process its share under torchrun); the gathered sequences in
    label order on the main process, None on the others."""
    dist = dist or Distributed()
    mine = np.arange(dist.rank, len(labels), dist.world)
    parts = sampler.generate(labels, mine, decoding, seed, batch_size,
                             progress + (f" on rank {dist.rank}" if dist.world > 1 and progress else ""), stats)
    if dist.world > 1:
        gathered = [None] * dist.world if dist.is_main else None
        torch.distributed.gather_object(parts, gathered, dst=0)
        parts = [part for rank_parts in (gathered or []) for part in rank_parts]
    return _in_row_order(parts) if dist.is_main else None


def run(p: Params, device_name: str = "auto", model_dir: str | Path = "data/model",
        out: str | Path = "data/samples", figures_dir: str | Path = "reports/samples",
        metrics_path: str | Path = "reports/sample.json") -> dict | None:
    settings = p.sample
    dist = Distributed()
    device = resolve_device(device_name, p.profile, dist.local_rank)
    dist.start(device)
    sampler = load_sampler(model_dir, device)
    classes = class_list(settings.classes, sampler.n_classes)
    labels = np.repeat(np.array(classes, dtype=np.int64), settings.per_class)
    decoding = decoding_of(settings)
    clock = time.perf_counter()
    stats = SamplingStats()
    encoded = sample_rows(sampler, labels, decoding, settings.seed, settings.batch_size, dist, "sample", stats)
    seconds = time.perf_counter() - clock
    metrics = None
    if dist.is_main:
        images = sampler.language.decode(encoded)  # checks every sequence against the grammar once more
        with atomic_dir(out) as tmp:
            write_samples(tmp / "samples.parquet", labels, encoded, images, sampler.language.vocab_size)
        sample_figures(sampler, encoded, labels, images, classes, settings.per_class, Path(figures_dir))
        metrics = {"samples": int(len(labels)), "length_mean": float(encoded.lengths.mean()),
                   "length_max": int(encoded.lengths.max()), "decoding": asdict(decoding),
                   "seconds": seconds, "images_per_s": len(labels) / seconds, "device": device.type,
                   "processes": dist.world, "traffic_ratio": stats.traffic_ratio, "cache_ratio": stats.cache_ratio}
        write_json(metrics_path, metrics)
        log(f"wrote {len(labels)} samples to {out}, mean length {encoded.lengths.mean():.1f}, "
            f"{len(labels) / seconds:.1f} images/s")
    dist.barrier()
    dist.stop()
    return metrics


def main(p: Params, device: str) -> None:
    run(p, device)
