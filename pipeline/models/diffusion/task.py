"""The train stage's view of the diffusion baseline (the same interface as the transformer's
task): batches of noised training images, the noise-prediction loss, FLOPs counted with torch's
FlopCounterMode, validation and the saved form (diffusers' files plus formats.DIFFUSION_MARKER).
It trains on the images the token shards hold (with `-S family=diffusion`: pixels at 256 levels,
the data set's exact images)."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.flop_counter import FlopCounterMode

from ... import formats
from ...batches import LengthBatches, class_dropout
from ...devices import Distributed, autocast
from ...languages.base import from_description
from ...languages.pixels import PixelLanguage
from ...params import Params
from ...progress import log
from .network import TIMESTEPS, build_unet, noise_schedule, padded_size, to_model_space

MARKER = formats.DIFFUSION_MARKER


class DiffusionTask:
    """The train stage's view of the diffusion model (the same interface as TransformerTask)."""

    unit = "pixel"

    def __init__(self, p: Params, tokens_root: Path, device: torch.device, dist: Distributed):
        self.p, self.device, self.dist = p, device, dist
        self.meta = formats.read_meta(tokens_root)
        language = from_description(self.meta["language"])
        self.splits = {}
        for split in ("train", "test"):
            tokens = formats.read_split(tokens_root, split, self.meta)
            self.splits[split] = (language.decode(tokens.encoded), tokens.labels.astype(np.int64))
        self.height, self.width = self.splits["train"][0].shape[1:3]
        self.channels = 3 if language.colour else 1
        # Samples come back as the 256-level pixel language of these images (grey or RGB).
        self.sample_language = PixelLanguage(language.wavelet, 256, self.height, self.width,
                                             language.chroma)
        self.n_classes = self.meta["n_classes"]
        self.size = padded_size(self.height, self.width)
        self.model = build_unet(p, self.n_classes, self.size, self.channels).to(device)
        self.schedule = noise_schedule()
        self.batches = LengthBatches(np.zeros(len(self.splits["train"][1])), p.train.batch_size, p.train.seed,
                                     dist.world, dist.rank)
        self.model.eval()
        with FlopCounterMode(display=False) as counter:
            self._forward(self.model, to_model_space(self.splits["train"][0][:1]).to(device),
                          torch.zeros(1, dtype=torch.long, device=device),
                          torch.zeros(1, dtype=torch.long, device=device)).float().sum().backward()
        self.model.zero_grad(set_to_none=True)
        self.model.train()
        self._flops_per_image = counter.get_total_flops()

    def describe(self) -> str:
        return f"{len(self.splits['train'][1])} training images ({self.height} x {self.width})"

    def _forward(self, model, x, t, labels):
        class_labels = labels if self.p.model.condition == "class" else None
        return model(x, t, class_labels=class_labels).sample

    def _noised(self, images: np.ndarray, seed: list[int], rows: slice | None = None):
        """x0, the noised x_t, the noise and t for a batch; noise and t drawn from `seed` for the
        whole global batch (so resumes and process counts do not change them), then sliced."""
        x0 = to_model_space(images)
        generator = torch.Generator().manual_seed(int(np.random.SeedSequence(seed).generate_state(1)[0]))
        total = len(x0) if rows is None else self.p.train.batch_size * self.dist.world
        t = torch.randint(0, TIMESTEPS, (total,), generator=generator)
        noise = torch.randn((total, *x0.shape[1:]), generator=generator)
        if rows is not None:
            t, noise = t[rows][:len(x0)], noise[rows][:len(x0)]
        return self.schedule.add_noise(x0, noise, t), noise, t

    def batch(self, step: int) -> dict:
        images, labels = self.splits["train"]
        rows = self.batches.rows(step)
        size = self.p.train.batch_size
        share = slice(self.dist.rank * size, (self.dist.rank + 1) * size)
        noised, noise, t = self._noised(images[rows], [self.p.train.seed, step, 1], share)
        label = torch.from_numpy(labels[rows]).to(self.device)
        if self.p.model.condition == "class" and self.p.train.cond_dropout > 0:
            label = class_dropout(label, self.p, step, self.dist, self.n_classes)
        return {"x": noised.to(self.device), "noise": noise.to(self.device), "t": t.to(self.device), "label": label}

    def loss(self, trained, batch: dict) -> tuple[torch.Tensor, torch.Tensor]:
        """Summed squared error of the predicted noise, and the number of pixels."""
        predicted = self._forward(trained, batch["x"], batch["t"], batch["label"])
        error = F.mse_loss(predicted.float(), batch["noise"], reduction="sum")
        return error, torch.tensor(batch["noise"].numel(), device=self.device)

    def step_flops(self, step: int) -> float:
        return self._flops_per_image * self.p.train.batch_size * self.dist.world

    @torch.no_grad()
    def validate(self, rows: np.ndarray) -> dict:
        """Mean squared noise-prediction error on test images, at fixed noise levels and noise."""
        images, labels = self.splits["test"]
        self.model.eval()
        error = 0.0
        for start in range(0, len(rows), self.p.train.batch_size):
            chunk = rows[start:start + self.p.train.batch_size]
            noised, noise, t = self._noised(images[chunk], [self.p.train.seed, 10**9 + start, 2])
            with autocast(self.device, self.p.train.precision):
                predicted = self._forward(self.model, noised.to(self.device), t.to(self.device),
                                          torch.from_numpy(labels[chunk]).to(self.device))
            error += F.mse_loss(predicted.float(), noise.to(self.device), reduction="sum").item()
        return {"mse": error / (len(rows) * self.channels * self.size * self.size), "images": int(len(rows))}

    def validation_figures(self, val: dict) -> dict:
        return {"val/loss": val["mse"]}

    def describe_validation(self, val: dict) -> str:
        return f"val noise MSE {val['mse']:.4f}"

    def loss_figures(self, loss: float) -> dict:
        return {"train/loss": loss}

    @property
    def n_eval(self) -> int:
        return len(self.splits["test"][1])

    def final(self) -> dict:
        """Test noise-prediction error (a diffusion model has no exact likelihood here)."""
        n = self.n_eval if self.p.train.final_eval_images is None else min(self.n_eval, self.p.train.final_eval_images)
        final = self.validate(np.arange(n))
        log(f"test noise MSE over {final['images']} images: {final['mse']:.4f}")
        return final

    def save(self, folder: Path) -> None:
        self.model.save_pretrained(folder)
        self.schedule.save_pretrained(folder)
        (folder / MARKER).write_text(json.dumps({
            "family": "diffusion", "n_classes": self.n_classes, "condition": self.p.model.condition,
            "language": self.sample_language.describe()}, indent=2) + "\n")
