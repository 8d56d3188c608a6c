"""The diffusion baseline's network: a class-conditional DDPM (diffusers' `UNet2DModel` with class
embeddings and a null class for classifier-free guidance; epsilon prediction, 1,000 noise levels,
cosine schedule) over the data set's images centred in the power-of-two square the wavelet
language pads them to (32 x 32 for 28 x 28), in [-1, 1]."""
from __future__ import annotations

import numpy as np
import torch
from diffusers import DDPMScheduler, UNet2DModel
from diffusers.utils import logging as diffusers_logging

from ...params import Params
from ...wavelets import Geometry

TIMESTEPS = 1000
diffusers_logging.disable_progress_bar()


def padded_size(height: int, width: int) -> int:
    """The side of the square the images are centred in (the UNet's levels halve it)."""
    return Geometry(height, width).size


def build_unet(p: Params, n_classes: int, size: int, channels: int) -> UNet2DModel:
    """`channels`: 1 for grey images, 3 for RGB."""
    widths = tuple(p.model.unet_channels)
    conditional = p.model.condition == "class"
    return UNet2DModel(
        sample_size=size, in_channels=channels, out_channels=channels, block_out_channels=widths, layers_per_block=1,
        down_block_types=("DownBlock2D",) * (len(widths) - 1) + ("AttnDownBlock2D",),
        up_block_types=("AttnUpBlock2D",) + ("UpBlock2D",) * (len(widths) - 1),
        norm_num_groups=8, attention_head_dim=8, dropout=p.model.dropout,
        num_class_embeds=n_classes + 1 if conditional else None)  # + the null class


def noise_schedule() -> DDPMScheduler:
    return DDPMScheduler(num_train_timesteps=TIMESTEPS, beta_schedule="squaredcos_cap_v2", prediction_type="epsilon")


def to_model_space(images: np.ndarray) -> torch.Tensor:
    """(N, H, W) uint8 -> (N, 1, M, M) float in [-1, 1], centred on black (M: `padded_size`);
    (N, H, W, 3) RGB -> (N, 3, M, M)."""
    pixels = torch.from_numpy(images).float() / 127.5 - 1.0
    pixels = pixels.permute(0, 3, 1, 2) if pixels.ndim == 4 else pixels[:, None]
    n, channels, height, width = pixels.shape
    size = padded_size(height, width)
    out = torch.full((n, channels, size, size), -1.0)
    top, left = (size - height) // 2, (size - width) // 2
    out[:, :, top:top + height, left:left + width] = pixels
    return out


def to_images(x: torch.Tensor, height: int, width: int) -> np.ndarray:
    """(N, C, M, M) in [-1, 1] -> (N, H, W) uint8 (C = 1) or (N, H, W, 3) (C = 3)."""
    top, left = (x.shape[-2] - height) // 2, (x.shape[-1] - width) // 2
    pixels = ((x[:, :, top:top + height, left:left + width].float().clamp(-1, 1) + 1) * 127.5).round()
    pixels = pixels[:, 0] if x.shape[1] == 1 else pixels.permute(0, 2, 3, 1)
    return pixels.to(torch.uint8).cpu().numpy()
