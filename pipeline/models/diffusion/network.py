"""The diffusion baseline's network: a class-conditional DDPM (diffusers' `UNet2DModel` with class
embeddings and a null class for classifier-free guidance; epsilon prediction, 1,000 noise levels,
cosine schedule) over the data set's images centred in 32 x 32, in [-1, 1]."""
from __future__ import annotations

import numpy as np
import torch
from diffusers import DDPMScheduler, UNet2DModel
from diffusers.utils import logging as diffusers_logging

from ...params import Params

TIMESTEPS = 1000
SIZE = 32  # images are centred in 32 x 32 (three UNet levels halve it twice)
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
