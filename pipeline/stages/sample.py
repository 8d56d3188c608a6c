"""Stage `sample`: generate images by sampling the token language token by token.

The model family's sampler (`pipeline.models.families.load_sampler`) writes one sequence per
requested class: for the transformer, grammar-constrained decoding with a KV cache and
continuous batching (`pipeline.generation`), each sample's initial exponent e0 drawn from its
class's training distribution; for diffusion, DDIM. Classes are conditioned on, with optional
classifier-free guidance; temperature, top-k and top-p are transformers' logits processors.

    python -m pipeline sample                           # device auto
    torchrun --nproc-per-node 4 -m pipeline sample      # each rank samples its share
"""
from __future__ import annotations

import time
from dataclasses import asdict
from pathlib import Path

import numpy as np

from .. import figures
from ..devices import Distributed, environment, resolve_device
from ..formats import write_samples
from ..generation import SamplingStats, class_list, decoding_of, sample_rows
from ..io import atomic_dir, stage_paths, write_json
from ..languages.encoded import Encoded
from ..models.samplers import load_sampler
from ..params import Params
from ..progress import log

PARAMS = ("profile", "threads", "sample")
INPUTS = {"model": "data/model"}
OUTPUTS = {"samples": "data/samples", "metrics": "reports/sample.json", "figures": "reports/samples"}
PROGRESSIVE_EXAMPLES = 4


def _tile(images: np.ndarray, columns: int) -> np.ndarray:
    """(N, H, W) -> (rows, columns, H, W), blank cells after the last image."""
    rows = -(-len(images) // columns)
    cells = np.zeros((rows * columns, *images.shape[1:]))
    cells[:len(images)] = images
    return cells.reshape(rows, columns, *images.shape[1:])


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


def run(p: Params, device_name: str = "auto", **paths: str | Path) -> dict | None:
    paths = stage_paths(INPUTS, OUTPUTS, paths)
    settings = p.sample
    dist = Distributed()
    device = resolve_device(device_name, p.profile, dist.local_rank)
    dist.start(device)
    sampler = load_sampler(paths.model, device)
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
        with atomic_dir(paths.samples) as tmp:
            write_samples(tmp / "samples.parquet", labels, encoded, images, sampler.language.vocab_size)
        sample_figures(sampler, encoded, labels, images, classes, settings.per_class, paths.figures)
        metrics = {"samples": int(len(labels)), "length_mean": float(encoded.lengths.mean()),
                   "length_max": int(encoded.lengths.max()), "decoding": asdict(decoding),
                   "seconds": seconds, "images_per_s": len(labels) / seconds, "processes": dist.world,
                   "environment": environment(device), "traffic_ratio": stats.traffic_ratio, "cache_ratio": stats.cache_ratio}
        write_json(paths.metrics, metrics)
        log(f"wrote {len(labels)} samples to {paths.samples}, mean length {encoded.lengths.mean():.1f}, "
            f"{len(labels) / seconds:.1f} images/s")
    dist.barrier()
    dist.stop()
    return metrics


def main(p: Params, device: str) -> None:
    run(p, device)
