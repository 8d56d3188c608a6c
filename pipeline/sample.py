"""Stage `sample`: generate images by sampling the wavelet language token by token.

Each step the scan grammar gives every sequence the position (bp, i1, i2) of its next token and
the ids valid there (canonical form); the model's logits for the other ids are set to -inf, so
every sequence decodes, and a sequence ends exactly when its last bit-plane's scan does. The whole
batch moves together: one transformer step with a preallocated KV cache and one batched grammar
step per token. Classes are conditioned on, with optional classifier-free guidance; each sample's initial
exponent e0 is drawn from its class's training distribution, stored with the model.

    python -m pipeline sample                           # device auto
    torchrun --nproc-per-node 4 -m pipeline sample      # each rank samples its share
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch

from . import coder, figures, grammar, wavelets
from .io import atomic_dir
from .model import START, Decoder, WaveletGPT, unpack_valid
from .params import Params
from .progress import log
from .train import Distributed, resolve_device

SAMPLES_SCHEMA = pa.schema([
    ("label", pa.int16()), ("initial_exponent", pa.int8()),
    ("tokens", pa.list_(pa.uint8())), ("image", pa.list_(pa.uint8())),
])
PROGRESSIVE_EXAMPLES = 4


@dataclass(frozen=True)
class Decoding:
    """How the next token is chosen from the masked logits."""

    temperature: float = 1.0  # 0: greedy
    top_k: int = 0  # 0: off
    top_p: float = 1.0  # 1: off
    cfg_scale: float = 1.0  # 1: no classifier-free guidance


def language_of(model: WaveletGPT) -> grammar.Language:
    c = model.config
    return grammar.Language(c.size, c.method, c.final_exponent, c.initial_threshold)


def draw_initial_exponents(model: WaveletGPT, labels: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """e0 per sample from its class's training counts (all classes pooled for the null class)."""
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
    logits = logits.float().masked_fill(~valid, float("-inf"))
    if d.temperature == 0:
        return logits.argmax(dim=-1)
    logits = logits / d.temperature
    if d.top_k > 0:
        kth = logits.topk(min(d.top_k, logits.shape[-1]), dim=-1).values[:, -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if d.top_p < 1.0:
        sorted_logits, order = logits.sort(dim=-1, descending=True)
        cumulative = sorted_logits.softmax(dim=-1).cumsum(dim=-1)
        # Drop an id once the ids before it already hold top_p of the mass (the first always stays).
        drop_sorted = cumulative - sorted_logits.softmax(dim=-1) >= d.top_p
        drop = torch.zeros_like(drop_sorted).scatter(-1, order, drop_sorted)
        logits = logits.masked_fill(drop, float("-inf"))
    probs = logits.softmax(dim=-1)
    return torch.multinomial(probs, 1, generator=generator).squeeze(-1)


@torch.no_grad()
def generate(model: WaveletGPT, labels: np.ndarray, e0: np.ndarray, d: Decoding,
             generator: torch.Generator, autocast=None, max_steps: int | None = None) -> coder.Encoded:
    """Sample one sequence per (label, e0); returns them flat (positions included).

    max_steps cuts every sequence short (prefixes, for timing the loop)."""
    device = next(model.parameters()).device
    language = language_of(model)
    scan = grammar.BatchScan(language, e0)
    n = len(labels)
    guided = d.cfg_scale != 1.0 and model.config.condition == "class"
    label_t = torch.as_tensor(labels, device=device)
    if guided:  # the unconditional half of the batch sees the null class
        label_t = torch.cat([label_t, torch.full_like(label_t, model.config.null_class)])
    e0_t = torch.as_tensor(e0, device=device).repeat(2 if guided else 1)
    prev = torch.full((n,), START, device=device)
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
            conditional, unconditional = logits[:n], logits[n:]
            logits = unconditional + d.cfg_scale * (conditional - unconditional)
        valid = unpack_valid(torch.as_tensor(scan.masks, device=device))
        valid[~torch.as_tensor(live, device=device)] = True  # anything for finished sequences
        token = choose(logits, valid, d, generator)
        token_np = token.cpu().numpy()
        steps.append((live, token_np, scan.bp.copy(), scan.i1.copy(), scan.i2.copy()))
        scan.step(np.where(live, token_np, 0))
        prev = token
    return _collect(steps, e0)


def _collect(steps, e0: np.ndarray) -> coder.Encoded:
    """Per-step arrays (live, token, bp, i1, i2 for the whole batch) -> flat sequences."""
    live = np.stack([s[0] for s in steps], axis=1)  # (B, T)
    columns = [np.stack([s[c] for s in steps], axis=1)[live].astype(np.uint8) for c in range(1, 5)]
    lengths = live.sum(axis=1)
    offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
    return coder.Encoded(*columns, offsets, e0.astype(np.int8))


def _merge(parts: list[tuple[np.ndarray, coder.Encoded]], e0: np.ndarray) -> coder.Encoded:
    """Batches generated for rows `rows` (any order, any rank) -> one Encoded in row order."""
    pieces = {}
    for rows, encoded in parts:
        for j, row in enumerate(rows):
            seq = slice(encoded.offsets[j], encoded.offsets[j + 1])
            pieces[int(row)] = [getattr(encoded, name)[seq] for name in ("tokens", "bp", "i1", "i2")]
    ordered = [pieces[row] for row in range(len(e0))]
    lengths = np.array([len(piece[0]) for piece in ordered])
    columns = [np.concatenate([piece[c] for piece in ordered]) for c in range(4)]
    return coder.Encoded(*columns, np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64),
                         e0.astype(np.int8))


def _tile(images: np.ndarray, columns: int) -> np.ndarray:
    """(N, H, W) -> (rows, columns, H, W), blank cells after the last image."""
    rows = -(-len(images) // columns)
    cells = np.zeros((rows * columns, *images.shape[1:]))
    cells[:len(images)] = images
    return cells.reshape(rows, columns, *images.shape[1:])


def to_images(encoded: coder.Encoded, language: grammar.Language, wavelet: str, height: int,
              width: int) -> np.ndarray:
    """Decode sequences (checking them against the grammar once more) -> (N, H, W) uint8."""
    approx = coder.decode_batch(encoded.tokens, encoded.offsets, encoded.initial_exponents, language)
    return wavelets.to_uint8(wavelets.crop(wavelets.inverse(approx, wavelet), height, width))


def write_samples(path: Path, labels: np.ndarray, encoded: coder.Encoded, images: np.ndarray) -> None:
    flat_images = images.reshape(len(images), -1)
    image_offsets = np.arange(len(images) + 1, dtype=np.int32) * flat_images.shape[1]
    table = pa.Table.from_arrays([
        pa.array(labels.astype(np.int16)), pa.array(encoded.initial_exponents.astype(np.int8)),
        pa.ListArray.from_arrays(pa.array(encoded.offsets.astype(np.int32)), pa.array(encoded.tokens, pa.uint8())),
        pa.ListArray.from_arrays(pa.array(image_offsets), pa.array(flat_images.reshape(-1), pa.uint8())),
    ], schema=SAMPLES_SCHEMA)
    pq.write_table(table, path, compression="zstd")


def read_samples(path: str | Path) -> tuple[np.ndarray, np.ndarray, list[np.ndarray], np.ndarray]:
    """labels, e0, token sequences, images (N, 28, 28) uint8 of a samples.parquet."""
    table = pq.read_table(path, schema=SAMPLES_SCHEMA).combine_chunks()
    images = table.column("image").chunk(0).flatten().to_numpy().astype(np.uint8) if table.num_rows \
        else np.zeros(0, np.uint8)
    tokens = [np.asarray(a, np.uint8) for a in table.column("tokens").to_pylist()]
    return (table.column("label").to_numpy(), table.column("initial_exponent").to_numpy(), tokens,
            images.reshape(table.num_rows, 28, 28))


def class_list(classes, n_classes: int) -> list[int]:
    if classes == "all":
        return list(range(n_classes))
    bad = [c for c in classes if not 0 <= c < n_classes]
    if bad:
        raise ValueError(f"sample.classes has {bad}; the model knows classes 0..{n_classes - 1}")
    return list(classes)


def progressive_figure(model: WaveletGPT, encoded: coder.Encoded, labels: np.ndarray, path: Path) -> None:
    """A few samples, of different classes where there are several, after each bit-plane (top
    rows) and where that plane's tokens sit in the 32 x 32 coefficient matrix (bottom rows): the
    coarse-to-fine generation."""
    c, language = model.config, language_of(model)
    classes = np.unique(labels)
    shown = classes[np.linspace(0, len(classes) - 1, min(PROGRESSIVE_EXAMPLES, len(classes))).astype(int)]
    picks = [int(np.flatnonzero(labels == label)[0]) for label in shown]
    planes = int(language.planes(encoded.initial_exponents[picks]).max())
    cells = np.zeros((2 * len(picks), planes, c.image_height, c.image_width))
    # The coefficient maps are shown at the image's scale (nearest-neighbour resize).
    rows = np.arange(c.image_height) * c.size // c.image_height
    cols = np.arange(c.image_width) * c.size // c.image_width
    for j, pick in enumerate(picks):
        seq = slice(encoded.offsets[pick], encoded.offsets[pick + 1])
        bp, i1, i2 = encoded.bp[seq], encoded.i1[seq], encoded.i2[seq]
        approx = coder.decode_after_each_plane(encoded, pick, language, planes)
        cells[2 * j, :planes] = np.clip(wavelets.crop(wavelets.inverse(approx, c.wavelet),
                                                     c.image_height, c.image_width), 0, 1)
        for plane in range(planes):
            where = np.zeros((c.size, c.size))
            np.add.at(where, (i1[bp == plane], i2[bp == plane]), 1)
            scaled = where / max(1.0, where.max())
            cells[2 * j + 1, plane] = scaled[np.ix_(rows, cols)]
    row_labels = [text for pick in picks for text in
                  (f"class {labels[pick]}\n{encoded.lengths[pick]} tok", "token\npositions")]
    figures.image_grid(cells, path, row_labels, [f"after bp {b}" for b in range(planes)],
                       title="Coarse-to-fine generation: image after each bit-plane, and that plane's token positions")


def run(p: Params, device_name: str = "auto", model_dir: str | Path = "data/model",
        out: str | Path = "data/samples", figures_dir: str | Path = "reports/samples") -> dict | None:
    s = p.sample
    dist = Distributed()
    device = resolve_device(device_name, dist.local_rank)
    dist.start(device)
    model = WaveletGPT.from_pretrained(model_dir).to(device).eval()
    c = model.config
    classes = class_list(s.classes, c.n_classes)
    labels = np.repeat(np.array(classes, dtype=np.int64), s.per_class)
    e0 = draw_initial_exponents(model, labels, np.random.default_rng(s.seed))
    decoding = Decoding(s.temperature, s.top_k, s.top_p, s.cfg_scale)
    generator = torch.Generator(device=device)
    generator.manual_seed(s.seed * 1_000_003 + dist.rank)
    autocast = torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda" else None

    mine = np.arange(dist.rank, len(labels), dist.world)
    parts = []
    for start in range(0, len(mine), s.batch_size):
        rows = mine[start:start + s.batch_size]
        parts.append((rows, generate(model, labels[rows], e0[rows], decoding, generator, autocast)))
        log(f"sample: {min(start + s.batch_size, len(mine))}/{len(mine)} sequences"
            + (f" on rank {dist.rank}" if dist.world > 1 else ""))
    if dist.world > 1:
        gathered = [None] * dist.world if dist.is_main else None
        torch.distributed.gather_object(parts, gathered, dst=0)
        parts = [part for rank_parts in (gathered or []) for part in rank_parts]
    metrics = None
    if dist.is_main:
        encoded = _merge(parts, e0)
        images = to_images(encoded, language_of(model), c.wavelet, c.image_height, c.image_width)
        with atomic_dir(out) as tmp:
            write_samples(tmp / "samples.parquet", labels, encoded, images)
        figures_dir = Path(figures_dir)
        by_class = images.reshape(len(classes), s.per_class, c.image_height, c.image_width) / 255.0
        for label, class_images in zip(classes, by_class):
            figures.image_grid(_tile(class_images, 10), figures_dir / f"class_{label}.png",
                               title=f"class {label}: {s.per_class} samples")
        figures.image_grid(by_class[:, :10], figures_dir / "overview.png",
                           [str(label) for label in classes], title="Samples (rows: classes)")
        progressive_figure(model, encoded, labels, figures_dir / "progressive.png")
        metrics = {"samples": int(len(labels)), "length_mean": float(encoded.lengths.mean()),
                   "length_max": int(encoded.lengths.max())}
        log(f"wrote {len(labels)} samples to {out}, mean length {encoded.lengths.mean():.1f}")
    dist.barrier()
    dist.stop()
    return metrics
