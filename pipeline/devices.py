"""Which device a stage runs on, and torchrun's processes.

The device is not a tracked param: `--device` or WAVELET_DEVICE pick it, `auto` takes CUDA when
present. A profile that is meant for a GPU (`profile: gpu`) stops at once on a machine without
CUDA instead of quietly running for hours on the CPU; asking for the CPU explicitly runs it there.
"""
from __future__ import annotations

import os
import platform
from pathlib import Path

import torch

DEVICE_ENV = "WAVELET_DEVICE"
DEVICES = ("auto", "cuda", "cpu")
GPU_PROFILES = ("gpu",)


def resolve_device(requested: str = "auto", profile: str | None = None, local_rank: int = 0) -> torch.device:
    """The torch device for `requested` (the --device option; WAVELET_DEVICE when it is auto)."""
    name = (os.environ.get(DEVICE_ENV) or "auto") if requested == "auto" else requested
    if name not in DEVICES:
        raise ValueError(f"device {name!r} is not one of {', '.join(DEVICES)} (--device or {DEVICE_ENV})")
    has_cuda = torch.cuda.is_available()
    if name == "cuda" and not has_cuda:
        raise RuntimeError(f"device cuda was asked for, but torch sees no CUDA device here "
                           f"(torch {torch.__version__}); use --device cpu or {DEVICE_ENV}=cpu")
    if name == "auto" and not has_cuda and profile in GPU_PROFILES:
        raise RuntimeError(
            f"params.yaml: profile={profile!r} is sized for a GPU and torch sees no CUDA device here; "
            f"run the default profile (dvc exp run -S profile=cpu), or pass --device cpu / set "
            f"{DEVICE_ENV}=cpu to run it on the CPU anyway")
    if name == "cpu" or (name == "auto" and not has_cuda):
        return torch.device("cpu")
    return torch.device("cuda", local_rank)


_interop_threads_set = False


def use_threads(count: int) -> None:
    """Run torch's CPU work on `count` intra-op threads (param `threads`: its CPU figures depend on
    the count) and, once, on one inter-op thread."""
    global _interop_threads_set
    torch.set_num_threads(count)
    if not _interop_threads_set:
        _interop_threads_set = True
        try:
            torch.set_num_interop_threads(1)
        except RuntimeError:  # torch allows it only before its first inter-op parallel work
            pass


def cpu_name() -> str:
    """The CPU's model name (Linux), else what the platform module knows."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def environment(device: torch.device) -> dict:
    """What a run's figures depend on besides its code, params and data: the device (the CPU's
    kind, the GPU's name), torch's thread count and the versions of the numerical libraries."""
    import numpy
    import transformers

    return {"device": device.type, "cpu": cpu_name(), "cpu_cores": os.cpu_count(),
            "gpu": torch.cuda.get_device_name(device) if device.type == "cuda" else None,
            "threads": torch.get_num_threads(), "python": platform.python_version(), "torch": torch.__version__,
            "numpy": numpy.__version__, "transformers": transformers.__version__}


def slow_bf16(device: torch.device) -> bool:
    """True on a CPU without oneDNN's bf16 kernels (x86 without AVX-512): there torch's bf16
    matrix products fall back to scalar loops, 50x slower than fp32 on an AVX2 AMD EPYC
    (2026-12-04: a 4096 x 512 x 512 product took 3.5 s against 67 ms)."""
    return device.type == "cpu" and not torch.ops.mkldnn._is_mkldnn_bf16_supported()


def autocast(device: torch.device, precision: str = "bf16"):
    """bf16 autocast (fp32 weights) or a no-op context for fp32."""
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=precision == "bf16")


class Distributed:
    """torchrun's environment, or a single process."""

    def __init__(self):
        self.world = int(os.environ.get("WORLD_SIZE", "1"))
        self.rank = int(os.environ.get("RANK", "0"))
        self.local_rank = int(os.environ.get("LOCAL_RANK", "0"))
        self.is_main = self.rank == 0

    def start(self, device: torch.device) -> None:
        if self.world > 1:
            backend = "nccl" if device.type == "cuda" else "gloo"
            torch.distributed.init_process_group(backend)
            if device.type == "cuda":
                torch.cuda.set_device(device)

    def barrier(self) -> None:
        if self.world > 1:
            torch.distributed.barrier()

    def all_sum(self, value: torch.Tensor) -> torch.Tensor:
        """The sum of `value` over all processes (itself in a single process)."""
        if self.world > 1:
            value = value.clone()
            torch.distributed.all_reduce(value)
        return value

    def stop(self) -> None:
        if self.world > 1 and torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()
