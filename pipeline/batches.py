"""Which training examples make up each step's batch: the same for a given seed and step, however
many processes share the work, so a resumed run and a DDP run see what one process would."""
from __future__ import annotations

import numpy as np
import torch

from .devices import Distributed
from .params import Params


class LengthBatches:
    """Global batches of `batch_size * world` similar-length sequences, a fresh seeded order every
    epoch; rank r trains on the r-th slice of each.

    The global batch of step s depends only on (seed, s, batch_size * world): a resumed run sees
    the same batches as an uninterrupted one, and 2 processes of batch b see what one process of
    batch 2b sees. Every batch is full (a random few sequences sit out each epoch instead).
    """

    def __init__(self, lengths: np.ndarray, batch_size: int, seed: int, world: int = 1, rank: int = 0):
        self.lengths, self.batch_size, self.seed, self.world, self.rank = lengths, batch_size, seed, world, rank
        self.global_size = batch_size * world
        if len(lengths) < self.global_size:
            raise ValueError(f"train.batch_size={batch_size} x {world} process(es) needs at least "
                             f"{self.global_size} training sequences; data/tokens has {len(lengths)}")
        self.per_epoch = len(lengths) // self.global_size
        self._epoch_number, self._batches = -1, []

    def _epoch(self, epoch: int) -> list[np.ndarray]:
        rng = np.random.default_rng([self.seed, epoch])
        # Sort by length with random tie-breaking and jitter, so batches change between epochs.
        keys = self.lengths + rng.uniform(0, 32, len(self.lengths))
        sitting_out = rng.choice(len(keys), len(keys) % self.global_size, replace=False)
        keys[sitting_out] = np.inf
        order = np.argsort(keys, kind="stable")[:self.per_epoch * self.global_size]
        batches = order.reshape(self.per_epoch, self.global_size)
        return [batches[i] for i in rng.permutation(self.per_epoch)]

    def global_rows(self, step: int) -> np.ndarray:
        epoch, index = divmod(step, self.per_epoch)
        if epoch != self._epoch_number:
            self._epoch_number, self._batches = epoch, self._epoch(epoch)
        return self._batches[index]

    def rows(self, step: int) -> np.ndarray:
        """This rank's share of the global batch of `step`."""
        return self.global_rows(step)[self.rank * self.batch_size:(self.rank + 1) * self.batch_size]


def class_dropout(labels: torch.Tensor, p: Params, step: int, dist: Distributed, null_class: int) -> torch.Tensor:
    """Replace a `train.cond_dropout` share of labels by the null class (classifier-free guidance).
    Drawn for the global batch from (seed, step), so it survives resumes and does not depend on
    the number of processes."""
    size = p.train.batch_size
    generator = torch.Generator().manual_seed(p.train.seed * 1_000_003 + step)
    drop = torch.rand(size * dist.world, generator=generator) < p.train.cond_dropout
    drop = drop[dist.rank * size:dist.rank * size + len(labels)]
    return torch.where(drop.to(labels.device), torch.full_like(labels, null_class), labels)
