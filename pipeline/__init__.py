"""Autoregressive image generation on wavelet tokens (arXiv 2406.19997) as a DVC pipeline."""
