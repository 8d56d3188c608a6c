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
from .formats import concatenate, write_samples
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


def choose(logits: torch.Tensor, valid: torch.Tensor, d: Decoding, generator: torch.Generator) -> torch.Tensor:
    """Next token ids (B,) from logits (B, V), only ever among the valid ids."""
    logits = masked_logits(logits.float(), valid)
    if d.temperature == 0:
        return logits.argmax(dim=-1)
    probs = d.warpers()(None, logits).softmax(dim=-1)
    return torch.multinomial(probs, 1, generator=generator).squeeze(-1)


@torch.no_grad()
def generate(model: WaveletGPT, labels: np.ndarray, e0: np.ndarray, d: Decoding,
             generator: torch.Generator, autocast=None, max_steps: int | None = None) -> Encoded:
    """Sample one sequence per (label, e0); returns them flat (positions included).

    max_steps cuts every sequence short (prefixes, for timing the loop)."""
    device = next(model.parameters()).device
    scan = model.language.scan(e0)
    n = len(labels)
    guided = d.cfg_scale != 1.0 and model.config.condition == "class"
    guidance = ClassifierFreeGuidanceLogitsProcessor(d.cfg_scale) if guided else None
    label_t = torch.as_tensor(labels, device=device)
    if guided:  # the unconditional half of the batch sees the null class
        label_t = torch.cat([label_t, torch.full_like(label_t, model.config.null_class)])
    e0_t = torch.as_tensor(e0, device=device).repeat(2 if guided else 1)
    prev = torch.full((n,), model.config.start_token, device=device)
    decoder = Decoder(model, len(label_t), dtype=torch.bfloat16 if device.type == "cuda" else None)
    autocast = autocast or torch.autocast(device.type, enabled=False)
    steps: list[tuple[np.ndarray, ...]] = []
    while not scan.done.all() and len(steps) != max_steps:
        live = ~scan.done
        # Finished sequences keep riding along (their tokens are ignored); give them position 0.
        positions = [torch.as_tensor(np.where(live, a, 0), device=device) for a in (scan.bp, scan.i1, scan.i2)]
        x = prev
        if guided:
            x, positions = x.repeat(2), [a.repeat(2) for a in positions]
        with autocast:
            logits = decoder.step(x, *positions, e0_t, label_t).float()
        if guided:
            logits = guidance(prev[:, None], logits)
        valid = torch.as_tensor(scan.valid(), device=device)
        valid[~torch.as_tensor(live, device=device)] = True  # anything for finished sequences
        token = choose(logits, valid, d, generator)
        token_np = token.cpu().numpy()
        steps.append((live, token_np, scan.bp.copy(), scan.i1.copy(), scan.i2.copy()))
        scan.step(np.where(live, token_np, 0))
        prev = token
    return _collect(steps, e0)


def _collect(steps, e0: np.ndarray) -> Encoded:
    """Per-step arrays (live, token, bp, i1, i2 for the whole batch) -> flat sequences."""
    live = np.stack([s[0] for s in steps], axis=1)  # (B, T)
    columns = [np.stack([s[c] for s in steps], axis=1)[live].astype(np.uint8) for c in range(1, 5)]
    lengths = live.sum(axis=1)
    offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
    return Encoded(*columns, offsets, e0.astype(np.int8))


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
                 generator: torch.Generator, progress: str = "") -> list[tuple[np.ndarray, Encoded]]:
        """Sequences for labels[rows], batch by batch. Each row's e0 is drawn from (seed, all labels),
        so it does not depend on which rows a process samples."""
        device = next(self.model.parameters()).device
        e0 = draw_initial_exponents(self.model, labels, np.random.default_rng(seed))
        autocast = torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda" else None
        parts = []
        for start in range(0, len(rows), batch_size):
            chunk = rows[start:start + batch_size]
            parts.append((chunk, generate(self.model, labels[chunk], e0[chunk], decoding, generator, autocast)))
            if progress:
                log(f"{progress}: {min(start + batch_size, len(rows))}/{len(rows)} sequences")
        return parts


def load_sampler(model_dir: str | Path, device: torch.device):
    """The sampler for what the train stage saved in model_dir (a transformer or a diffusion model)."""
    from .diffusion import MARKER, DiffusionSampler

    if Path(model_dir, MARKER).is_file():
        return DiffusionSampler(Path(model_dir), device)
    return TransformerSampler(WaveletGPT.load(model_dir).to(device).eval())


def decoding_of(settings) -> Decoding:
    return Decoding(settings.temperature, settings.top_k, settings.top_p, settings.cfg_scale, settings.diffusion_steps)


def sample_rows(sampler, labels: np.ndarray, decoding: Decoding, seed: int, batch_size: int,
                device: torch.device, dist: Distributed | None = None, progress: str = "") -> Encoded | None:
    """Samples for all labels (each process its share under torchrun); the gathered sequences in
    label order on the main process, None on the others."""
    dist = dist or Distributed()
    generator = torch.Generator(device=device)
    generator.manual_seed(seed * 1_000_003 + dist.rank)
    mine = np.arange(dist.rank, len(labels), dist.world)
    parts = sampler.generate(labels, mine, decoding, seed, batch_size, generator,
                             progress + (f" on rank {dist.rank}" if dist.world > 1 else ""))
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
    encoded = sample_rows(sampler, labels, decoding, settings.seed, settings.batch_size, device, dist, "sample")
    seconds = time.perf_counter() - clock
    metrics = None
    if dist.is_main:
        images = sampler.language.decode(encoded)  # checks every sequence against the grammar once more
        with atomic_dir(out) as tmp:
            write_samples(tmp / "samples.parquet", labels, encoded, images)
        sample_figures(sampler, encoded, labels, images, classes, settings.per_class, Path(figures_dir))
        metrics = {"samples": int(len(labels)), "length_mean": float(encoded.lengths.mean()),
                   "length_max": int(encoded.lengths.max()), "decoding": asdict(decoding),
                   "seconds": seconds, "images_per_s": len(labels) / seconds, "device": device.type,
                   "processes": dist.world}
        write_json(metrics_path, metrics)
        log(f"wrote {len(labels)} samples to {out}, mean length {encoded.lengths.mean():.1f}, "
            f"{len(labels) / seconds:.1f} images/s")
    dist.barrier()
    dist.stop()
    return metrics


def main(p: Params, device: str) -> None:
    run(p, device)
