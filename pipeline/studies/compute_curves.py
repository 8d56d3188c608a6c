"""Quality against training compute: each system at several FLOPs budgets, beside its tokenizer
ceiling and real data.

    python -m pipeline.studies.compute_curves queue     # dvc exp run --queue, one experiment per point
    dvc queue start                                     # run them (dvc queue status to follow)
    python -m pipeline.studies.compute_curves table     # reports/compute_curves.md and .png

Every point is an experiment named `cc-<system>-<budget>` (`-s<seed>` for other training seeds),
run from the same conf/ through the same stages with `train.flops` set (FLOPs counted with
FlopCounterMode, as in the ablation table); the table is built from DVC's own records
(`dvc exp show --json`), so what it says is what ran, and each row names the commit it ran from.
Decoding is tuned per row on the validation half of the test split, as in every table.
"""
from __future__ import annotations

import platform
import re
import subprocess
import sys
from datetime import date
from pathlib import Path
from typing import Annotated

import numpy as np
import typer

from .ablations import experiments, fmt

BUDGETS = (1.0e13, 4.0e13, 1.6e14)
SEEDS = {4.0e13: (0, 1)}  # budgets with a second training seed, to show the seed-to-seed spread
# The systems pin their language so that they stay what they are named when conf/ changes its default.
SYSTEMS = {  # system -> (name in the table and figure, overrides)
    "pixels": ("pixels (4 levels)", ["tokenizer.method=pixels", "tokenizer.pixel_levels=4"]),
    "diffusion": ("diffusion (DDPM, DDIM sampling)", ["family=diffusion"]),
    "zerotree": ("wavelet: zero-tree, haar, f = -1",
                 ["wavelet=haar", "tokenizer.method=zerotree", "tokenizer.final_exponent=-1",
                  "tokenizer.bpe_vocab_size=0"]),
}
# The completion stage is not part of the study: one small setting keeps it from costing a row's time.
LIGHT = ["complete.prefix_planes=[2]", "complete.images=20", "complete.completions=1"]
PREFIX = "cc-"
app = typer.Typer(add_completion=False, no_args_is_help=True, help=__doc__)


def point_name(system: str, budget: float, seed: int = 0) -> str:
    return f"{PREFIX}{system}-{budget:g}".replace("e+", "e") + (f"-s{seed}" if seed else "")


def overrides(system: str, budget: float, seed: int = 0) -> list[str]:
    return SYSTEMS[system][1] + LIGHT + [f"train.flops={budget:g}", f"train.seed={seed}"]


def points(systems, budgets) -> list[tuple[str, float, int]]:
    """(system, budget, seed) of every point, budget by budget in the order given (a queue runs
    the budgets it needs first first)."""
    return [(s, b, seed) for b in budgets for seed in SEEDS.get(b, (0,)) for s in systems]


@app.command()
def queue(systems: list[str] = typer.Option(list(SYSTEMS), "--system", help="systems to queue (default: all)"),
          budgets: list[float] = typer.Option(list(BUDGETS), "--budget", help="training FLOPs (default: all)")
          ) -> None:
    """Queue one experiment per (system, budget, seed) (`dvc queue start` runs them)."""
    for system in systems:
        if system not in SYSTEMS:
            sys.exit(f"system {system!r} is not one of {', '.join(SYSTEMS)}")
    for system, budget, seed in points(systems, budgets):
        command = ["dvc", "exp", "run", "--queue", "-n", point_name(system, budget, seed)]
        for override in overrides(system, budget, seed):
            command += ["-S", override]
        print(" ".join(command), flush=True)
        subprocess.run(command, check=True)


if __name__ == "__main__":
    app()
