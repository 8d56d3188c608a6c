"""DDIM sampling of the diffusion baseline (`sample.diffusion_steps` steps, eta 0), with
classifier-free guidance; the images come back as sequences of the 256-level pixel language (the
samples schema), so the same evaluate code scores them."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from diffusers import DDIMScheduler, UNet2DModel

from ...devices import autocast
from ...formats import DIFFUSION_MARKER
from ...generation import guide
from ...io import InputError, read_json
from ...languages.base import from_description
from ...progress import log
from .network import padded_size, to_images


class DiffusionSampler:
    """DDIM sampling of a trained UNet, with classifier-free guidance; the images come back as
    sequences of the 256-level pixel language (the samples schema), so they decode exactly."""

    autoregressive = False

    def __init__(self, model_dir: Path, device: torch.device):
        info = read_json(model_dir / DIFFUSION_MARKER, "train")
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
    def noise_prediction(self, x: torch.Tensor, t, labels: torch.Tensor, scale: float) -> torch.Tensor:
        """The UNet's noise prediction for x at step t, guided when the model is conditional and
        the scale is not 1: the rows run twice, first with their classes, then with the null class."""
        device = x.device
        guided = self.conditional and scale != 1.0
        x_in = torch.cat([x, x]) if guided else x
        if guided:
            labels = torch.cat([labels, torch.full_like(labels, self.n_classes)])
        with autocast(device, "bf16" if device.type == "cuda" else "fp32"):
            eps = self.unet(x_in, t, class_labels=labels if self.conditional else None).sample.float()
        if not guided:
            return eps
        conditional, unconditional = eps.chunk(2)
        return guide(conditional, unconditional, scale)

    @torch.no_grad()
    def generate(self, labels: np.ndarray, rows: np.ndarray, decoding, seed: int, batch_size: int,
                 progress: str = "", stats=None, prefixes=None) -> list:
        """Images for labels[rows], `batch_size` at a time; each row's starting noise comes from
        (seed, row), so it does not depend on the batching or the process."""
        if prefixes is not None:
            raise ValueError("a diffusion model has no token prefixes to continue (completion is for wavelet languages)")
        device = next(self.unet.parameters()).device
        self.schedule.set_timesteps(decoding.diffusion_steps)
        parts, size = [], padded_size(self.language.image_height, self.language.image_width)
        for start in range(0, len(rows), batch_size):
            chunk = rows[start:start + batch_size]
            label = torch.as_tensor(labels[chunk], device=device)
            shape = (1, self.unet.config.in_channels, size, size)
            x = torch.cat([torch.randn(shape, generator=torch.Generator().manual_seed(seed * 1_000_003 + int(row)))
                           for row in chunk]).to(device)
            for t in self.schedule.timesteps:
                eps = self.noise_prediction(x, t, label, decoding.cfg_scale)
                x = self.schedule.step(eps, t, x, eta=0.0).prev_sample
            images = to_images(x, self.language.image_height, self.language.image_width)
            parts.append((chunk, self.language.encode_images(images)))
            if progress:
                log(f"{progress}: {min(start + batch_size, len(rows))}/{len(rows)} images")
        return parts
