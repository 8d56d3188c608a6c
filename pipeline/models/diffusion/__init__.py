"""The diffusion baseline: network (diffusers UNet and noise schedule), training task and sampler."""
