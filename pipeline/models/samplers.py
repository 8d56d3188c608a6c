"""The sampler of a trained model, by what the train stage saved: the wavelet transformer
(`transformer/`) or the diffusion baseline (`diffusion/`, whose diffusers import is paid only
when it is used). Both answer `generate(labels, rows, decoding, seed, batch_size, ...)`."""
from __future__ import annotations

from pathlib import Path

import torch

from ..formats import DIFFUSION_MARKER


def load_sampler(model_dir: str | Path, device: torch.device):
    """The sampler for what the train stage saved in model_dir (a transformer or a diffusion model)."""
    if Path(model_dir, DIFFUSION_MARKER).is_file():
        from .diffusion.sampler import (
            DiffusionSampler,  # diffusers is imported only for a diffusion model
        )

        return DiffusionSampler(Path(model_dir), device)
    from .transformer.network import WaveletGPT
    from .transformer.sampler import TransformerSampler

    model = WaveletGPT.load(model_dir).to(device).eval()
    # On CUDA the decoder runs in bf16 throughout (weights cast once, no per-step autocast).
    return TransformerSampler(model.to(torch.bfloat16) if device.type == "cuda" else model)
