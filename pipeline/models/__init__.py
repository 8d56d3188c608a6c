"""Model families, each in one place: the wavelet transformer (`transformer/`) and the diffusion
baseline (`diffusion/`), each with its network, its training task and its sampler; the domain
classifier of evaluation (`classifier`)."""
