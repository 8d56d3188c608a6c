"""The diffusion baseline: what a user would pick instead of the wavelet transformer.

A class-conditional DDPM (diffusers' `UNet2DModel` with class embeddings and a null class for
classifier-free guidance; epsilon prediction, 1,000 noise levels, cosine schedule), trained by
the train stage on the images the token shards hold (with `-S family=diffusion`: pixels at 256
levels, the data set's exact images), and sampled with DDIM (`sample.diffusion_steps` steps,
eta 0) by the sample and tune stages. Its samples go to the same samples schema (tokens: the
images in the pixel language) and are scored by the same evaluate code; its training FLOPs are
counted the same way, with torch's FlopCounterMode.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from diffusers import DDIMScheduler, DDPMScheduler, UNet2DModel
from diffusers.utils import logging as diffusers_logging
from torch.utils.flop_counter import FlopCounterMode

from . import formats
from .batches import LengthBatches, class_dropout
from .devices import Distributed, autocast
from .io import InputError, read_json
from .language import PixelLanguage, from_description
from .params import Params
from .progress import log

TIMESTEPS = 1000
SIZE = 32  # images are centred in 32 x 32 (three UNet levels halve it twice)
MARKER = formats.DIFFUSION_MARKER
diffusers_logging.disable_progress_bar()


def build_unet(p: Params, n_classes: int) -> UNet2DModel:
    widths = tuple(p.model.unet_channels)
    conditional = p.model.condition == "class"
    return UNet2DModel(
        sample_size=SIZE, in_channels=1, out_channels=1, block_out_channels=widths, layers_per_block=1,
        down_block_types=("DownBlock2D",) * (len(widths) - 1) + ("AttnDownBlock2D",),
        up_block_types=("AttnUpBlock2D",) + ("UpBlock2D",) * (len(widths) - 1),
        norm_num_groups=8, attention_head_dim=8, dropout=p.model.dropout,
        num_class_embeds=n_classes + 1 if conditional else None)  # + the null class


def noise_schedule() -> DDPMScheduler:
    return DDPMScheduler(num_train_timesteps=TIMESTEPS, beta_schedule="squaredcos_cap_v2", prediction_type="epsilon")


def to_model_space(images: np.ndarray) -> torch.Tensor:
    """(N, H, W) uint8 -> (N, 1, 32, 32) float in [-1, 1], centred on black."""
    n, height, width = images.shape
    out = torch.full((n, 1, SIZE, SIZE), -1.0)
    top, left = (SIZE - height) // 2, (SIZE - width) // 2
    out[:, 0, top:top + height, left:left + width] = torch.from_numpy(images).float() / 127.5 - 1.0
    return out


def to_images(x: torch.Tensor, height: int, width: int) -> np.ndarray:
    top, left = (SIZE - height) // 2, (SIZE - width) // 2
    pixels = ((x[:, 0, top:top + height, left:left + width].float().clamp(-1, 1) + 1) * 127.5).round()
    return pixels.to(torch.uint8).cpu().numpy()


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
        self.height, self.width = self.splits["train"][0].shape[1:]
        self.wavelet = language.wavelet
        self.n_classes = self.meta["n_classes"]
        self.model = build_unet(p, self.n_classes).to(device)
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
        return {"mse": error / (len(rows) * SIZE * SIZE), "images": int(len(rows))}

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
            "language": PixelLanguage(self.wavelet, 256, self.height, self.width).describe()}, indent=2) + "\n")


class DiffusionSampler:
    """DDIM sampling of a trained UNet, with classifier-free guidance; the images come back as
    sequences of the 256-level pixel language (the samples schema), so they decode exactly."""

    autoregressive = False

    def __init__(self, model_dir: Path, device: torch.device):
        info = read_json(model_dir / MARKER, "train")
        try:
            self.unet = UNet2DModel.from_pretrained(model_dir, low_cpu_mem_usage=False).to(device).eval()
            self.schedule = DDIMScheduler.from_pretrained(model_dir)
            self.language = from_description(info["language"])
        except Exception as error:  # diffusers, safetensors and json raise many kinds for a damaged file
            raise InputError(model_dir, f"is not a loadable diffusion model ({type(error).__name__}: "
                             f"{' '.join(str(error).split())[:300]})", "train") from None
        self.n_classes = info["n_classes"]
        self.conditional = info["condition"] == "class"

    @torch.no_grad()
    def generate(self, labels: np.ndarray, rows: np.ndarray, decoding, seed: int, batch_size: int,
                 progress: str = "", stats=None) -> list:
        """Images for labels[rows], `batch_size` at a time; each row's starting noise comes from
        (seed, row), so it does not depend on the batching or the process."""
        device = next(self.unet.parameters()).device
        guided = self.conditional and decoding.cfg_scale != 1.0
        self.schedule.set_timesteps(decoding.diffusion_steps)
        parts = []
        for start in range(0, len(rows), batch_size):
            chunk = rows[start:start + batch_size]
            label = torch.as_tensor(labels[chunk], device=device)
            if guided:
                label = torch.cat([label, torch.full_like(label, self.n_classes)])
            x = torch.cat([torch.randn((1, 1, SIZE, SIZE), generator=torch.Generator().manual_seed(seed * 1_000_003 + int(row)))
                           for row in chunk]).to(device)
            for t in self.schedule.timesteps:
                x_in = torch.cat([x, x]) if guided else x
                with autocast(device, "bf16" if device.type == "cuda" else "fp32"):
                    eps = self.unet(x_in, t, class_labels=label if self.conditional else None).sample.float()
                if guided:
                    conditional, unconditional = eps.chunk(2)
                    eps = unconditional + decoding.cfg_scale * (conditional - unconditional)
                x = self.schedule.step(eps, t, x, eta=0.0).prev_sample
            images = to_images(x, self.language.image_height, self.language.image_width)
            parts.append((chunk, self.language.encode_images(images)))
            if progress:
                log(f"{progress}: {min(start + batch_size, len(rows))}/{len(rows)} images")
        return parts
