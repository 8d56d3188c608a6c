"""CIFAR-10-JPEG at equal training compute: the colour wavelet language beside the pixel language
over RGB and the diffusion UNet.

    python -m pipeline.studies.colour_rows queue     # dvc exp run --queue, one experiment per system
    dvc queue start                                  # run them (dvc queue status to follow)
    python -m pipeline.studies.colour_rows table     # reports/cifar10_jpeg/rows.md and .png

Every row is an experiment named `cifar-<system>-<budget>`, run from the same conf/ with
`dataset=cifar10_jpeg` and the shared settings below, through the same stages with `train.flops`
set (FLOPs counted as in every table). The table is built from DVC's own records (`dvc exp show
--json`), names the commit each row ran from, and keeps every finished row in rows.json so that a
new clone regenerates it; each row's samples figure (real, tokenized, generated and tuned, per
class) is copied from the experiment's own commit. CIFAR-10-JPEG figures: its pixels went through
JPEG, so they are not comparable with published CIFAR-10 FIDs.
"""
from __future__ import annotations

import json
import platform
import re
import subprocess
import sys
from datetime import date
from pathlib import Path
from typing import Annotated

import typer

from .ablations import experiments, fmt, quality_bars
from .compute_curves import LIGHT, copy_samples_figure, row

BUDGET = 4.0e13  # the pixel row's training is about an hour of one AVX2 core in fp32
SYSTEMS = {  # system -> (name in the table, overrides); each pins its language
    # reports/cifar10_jpeg/ceilings.md: f = -4 / -3 is where the wavelet ceiling meets the 8-level
    # pixel language's classifier-FID (7.2 against 7.1), and 256 merges make it 442 tokens, not 3,072.
    "wavelet": ("wavelet: zero-tree, haar, f = -4 / chroma -3, BPE 256",
                ["wavelet=haar", "tokenizer.method=zerotree", "tokenizer.final_exponent=-4",
                 "tokenizer.chroma_final_exponent=-3", "tokenizer.bpe_vocab_size=256", "model.context=none"]),
    "pixels": ("pixels (8 levels per RGB channel)",
               ["tokenizer.method=pixels", "tokenizer.pixel_levels=8", "tokenizer.bpe_vocab_size=0"]),
    "diffusion": ("diffusion (DDPM, DDIM sampling)", ["family=diffusion"]),
}
SHARED = [
    "dataset=cifar10_jpeg",
    # CPUs without bf16 matmul units (AVX2) run bf16 about 50x slower than fp32.
    "train.precision=fp32",
    # 8 images a step give the pixel model about 340 steps of 24.6k tokens, as MNIST's pixel rows
    # have at batch 32 (337 steps of 25k); at 32 it would end its 50 warm-up steps with 30 to go.
    "train.batch_size=8",
    # The pixel model samples 0.26 images/s on one core (3,072 tokens with guidance): 250 samples,
    # and 3 per class for each of the 9 tuning settings, keep its sampling under an hour.
    "sample.per_class=25", "eval.num_samples=250", "tune.per_class=3",
    *LIGHT,
]
PREFIX = "cifar-"
REPORTS = Path("reports/cifar10_jpeg")
app = typer.Typer(add_completion=False, no_args_is_help=True, help=__doc__)


def row_name(system: str, budget: float) -> str:
    return f"{PREFIX}{system}-{budget:g}".replace("e+", "e")


def overrides(system: str, budget: float) -> list[str]:
    return SHARED + SYSTEMS[system][1] + [f"train.flops={budget:g}", "train.seed=0"]


@app.command()
def queue(systems: list[str] = typer.Option(list(SYSTEMS), "--system", help="systems to queue (default: all)"),
          budget: float = typer.Option(BUDGET, help="training FLOPs per row")) -> None:
    """Queue one experiment per system (`dvc queue start` runs them)."""
    for system in systems:
        if system not in SYSTEMS:
            sys.exit(f"system {system!r} is not one of {', '.join(SYSTEMS)}")
    for system in systems:
        command = ["dvc", "exp", "run", "--queue", "-n", row_name(system, budget)]
        for override in overrides(system, budget):
            command += ["-S", override]
        print(" ".join(command), flush=True)
        subprocess.run(command, check=True)


def colour_row(system: str, exp: dict) -> dict:
    """compute_curves' figures of one row, with its tuned decoding and its sequence length."""
    tokenized = exp["files"].get("reports/tokenize.json") or {}
    return {**row(system, exp), "decoding": exp["metrics"]["tuned"]["decoding"],
            "tokens_per_image": (tokenized.get("test") or {}).get("length_mean")}


def collect(record: Path, figures: Path) -> list[dict]:
    """Every finished row, in SYSTEMS order: this clone's experiments (their samples figure copied
    into `figures`), and the recorded rows of systems it has not run."""
    found = experiments()
    rows = {}
    for system in SYSTEMS:
        for name in sorted(found):
            if re.fullmatch(re.escape(PREFIX + system) + r"-[0-9.e]+", name):
                rows[system, found[name]["params"]["train"]["flops"]] = colour_row(system, found[name])
                copy_samples_figure(found[name]["rev"], figures / f"samples_{system}.png")
    for r in json.loads(record.read_text()) if record.exists() else []:
        rows.setdefault((r["system"], r["budget"]), r)
    return sorted(rows.values(), key=lambda r: (list(SYSTEMS).index(r["system"]), r["budget"]))


def decoding(r: dict) -> str:
    tuned = r["decoding"]
    return f"guidance {tuned['cfg_scale']:g}, " + (f"{tuned['diffusion_steps']} steps" if r["system"] == "diffusion"
                                                    else f"top-p {tuned['top_p']:g}")


@app.command()
def table(out: Path = typer.Option(REPORTS / "rows.md"),
          figure: Path = typer.Option(REPORTS / "rows.png"),
          record: Path = typer.Option(REPORTS / "rows.json", help="every finished row"),
          note: Annotated[str, typer.Option(help="how the rows ran (device, threads), printed under the title")] = ""
          ) -> None:
    """Write the table, the figure, the record and each row's samples figure."""
    rows = collect(record, out.parent)
    if not rows:
        sys.exit("no cifar-* experiments with metrics and no recorded rows; run `python -m "
                 "pipeline.studies.colour_rows queue` and `dvc queue start`")
    record.write_text(json.dumps(rows, indent=1) + "\n")
    first = rows[0]
    header = ("| system | tokens/image | training FLOPs | steps | training min | test bits/image | FID | FID, tuned | "
              "classifier-FID | classifier-FID, tuned | cond. acc. | cond. acc., tuned | tuned decoding | "
              "sampling img/s | tokenizer-ceiling classifier-FID / FID | commit |")
    lines = [f"# CIFAR-10-JPEG at equal training compute ({date.today()}, {platform.machine()} CPU, generated by "
             "`python -m pipeline.studies.colour_rows table` from `dvc exp show` and rows.json)", "",
             *([note, ""] if note else []),
             "CIFAR-10-JPEG figures (JPEG pixels), not comparable with published CIFAR-10 FIDs. Floors: real "
             f"training images score classifier-FID {fmt(first['real_classifier'])}, FID "
             f"{fmt(first['real_inception'])} and conditional accuracy {fmt(first['real_accuracy'], 3)}; a row's "
             "tokenizer ceiling is the same images through its language. 'tuned': the row's best decoding setting, "
             "chosen by classifier-FID on the validation half of the test split; the other figures use the shared "
             "settings (top-p 0.6, guidance 2; 50 DDIM steps for diffusion). 250 samples against 500 test images. "
             f"FID: {first['extractor']}; classifier-FID: the domain classifier's features. Settings every row shares: "
             f"`{' '.join(SHARED)}`. Samples: samples_<system>.png. 'commit': the code the row ran.", "",
             header, "|" + "---|" * (header.count("|") - 1)]
    for r in rows:
        lines.append("| " + " | ".join([
            SYSTEMS[r["system"]][0], fmt(r["tokens_per_image"]), f"{r['flops']:.3g}", str(r["steps"]),
            fmt(r["minutes"]), fmt(r["bits_per_image"]), fmt(r["generated_inception"]), fmt(r["tuned_inception"]),
            fmt(r["generated_classifier"]), fmt(r["tuned_classifier"]), fmt(r["generated_accuracy"], 3),
            fmt(r["tuned_accuracy"], 3), decoding(r), fmt(r["sample_images_per_s"], 2),
            f"{fmt(r['tokenizer_classifier'])} / {fmt(r['tokenizer_inception'])}", r["commit"]]) + " |")
    missing = [row_name(s, BUDGET) for s in SYSTEMS if (s, BUDGET) not in {(r["system"], r["budget"]) for r in rows}]
    if missing:
        lines += ["", "Not run (no finished experiment): " + ", ".join(missing)]
    out.write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    quality_bars([f"{SYSTEMS[r['system']][0]}\n{r['flops']:.2g} FLOPs" for r in rows], rows, figure,
                 "CIFAR-10-JPEG at equal training compute: quality per system against its tokenizer ceiling and "
                 "real data")


if __name__ == "__main__":
    app()
