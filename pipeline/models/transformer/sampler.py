"""Sampling a trained wavelet transformer: each sample's initial exponent drawn from its class's
training distribution, then the continuous-batching engine of `pipeline.generation`."""
from __future__ import annotations

import numpy as np

from ...generation import Decoding, SamplingStats, generate
from ...languages.encoded import Encoded
from .network import WaveletGPT


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


class TransformerSampler:
    """Autoregressive sampling of a trained WaveletGPT, grammar-constrained."""

    autoregressive = True

    def __init__(self, model: WaveletGPT):
        self.model = model
        self.language = model.language
        self.n_classes = model.config.n_classes
        self.conditional = model.config.condition == "class"

    def generate(self, labels: np.ndarray, rows: np.ndarray, decoding: Decoding, seed: int, batch_size: int,
                 progress: str = "", stats: SamplingStats | None = None,
                 prefixes: Encoded | None = None) -> list[tuple[np.ndarray, Encoded]]:
        """Sequences for labels[rows], `batch_size` decoding together. Each row's e0 (drawn from
        seed and all labels, or its prefix's) and random stream depend on the row only, not on
        which rows a process samples or how many at a time. With `prefixes` (one per label), row
        j continues prefix j."""
        if prefixes is None:
            e0 = draw_initial_exponents(self.model, labels, np.random.default_rng(seed))
        else:
            e0, prefixes = prefixes.initial_exponents.astype(np.int64), prefixes.select(rows)
        encoded = generate(self.model, labels[rows], e0[rows], decoding, seed, sequence_ids=rows, slots=batch_size,
                           prefixes=prefixes, stats=stats, progress=progress)
        return [(rows, encoded)]
