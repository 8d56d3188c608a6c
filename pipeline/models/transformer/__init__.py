"""The wavelet transformer: network (GPT-2 blocks, wavelet positions, KV-cached decoder), training
task and sampler."""
