"""Quality against training compute: each system at several FLOPs budgets, beside its tokenizer
ceiling and real data.

    python -m pipeline.studies.compute_curves queue     # dvc exp run --queue, one experiment per point
    dvc queue start                                     # run them (dvc queue status to follow)
    python -m pipeline.studies.compute_curves table     # reports/compute_curves.md and .png

Every point is an experiment named `cc-<system>-<budget>` (`-s<seed>` for other training seeds),
run from the same conf/ through the same stages with `train.flops` set (FLOPs counted with
FlopCounterMode, as in the ablation table); the table is built from DVC's own records
(`dvc exp show --json`), so what it says is what ran, and each row names the commit it ran from;
each experiment's samples figure is copied into reports/compute_curves/.
Experiments live in one clone's git refs, so `table` also keeps every finished point's row in
reports/compute_curves.json: a new clone regenerates the table from that record, and points it
runs itself join it (its own experiment wins over a recorded row of the same point).
Decoding is tuned per row on the validation half of the test split, as in every table.
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

import numpy as np
import typer

from .ablations import experiments, fmt, scores

BUDGETS = (1.0e13, 4.0e13, 1.6e14)
SEEDS = {4.0e13: (0, 1)}  # budgets with a second training seed, to show the seed-to-seed spread
# The systems pin their language so that they stay what they are named when conf/ changes its default.
SYSTEMS = {  # system -> (name in the table and figure, overrides)
    "pixels": ("pixels (4 levels)", ["tokenizer.method=pixels", "tokenizer.pixel_levels=4", "tokenizer.bpe_vocab_size=0"]),
    "diffusion": ("diffusion (DDPM, DDIM sampling)", ["family=diffusion"]),
    "zerotree": ("wavelet: zero-tree, haar, f = -1",
                 ["wavelet=haar", "tokenizer.method=zerotree", "tokenizer.final_exponent=-1",
                  "tokenizer.bpe_vocab_size=0", "model.context=none"]),
    # The ablation of the scan-state context: the same language and budget, with the features.
    "zerotree-context": ("wavelet: zero-tree, haar, f = -1, scan context",
                         ["wavelet=haar", "tokenizer.method=zerotree", "tokenizer.final_exponent=-1",
                          "tokenizer.bpe_vocab_size=0", "model.context=scan"]),
    # The BPE study's winner (reports/bpe_tradeoff.md: 256 ids beat no merges at 3e13 FLOPs): the
    # default's language and ceiling in 76 tokens instead of 359.
    "zerotree-bpe256": ("wavelet: zero-tree, haar, f = -1, BPE 256",
                        ["wavelet=haar", "tokenizer.method=zerotree", "tokenizer.final_exponent=-1",
                         "tokenizer.bpe_vocab_size=256", "model.context=none"]),
    # The frontier's candidates (reports/frontier.md): finer planes with merges, shorter than f = -1
    # unmerged (161 and 269 tokens against 359) at a ceiling near the pixel language's.
    "zerotree-f2-bpe256": ("wavelet: zero-tree, haar, f = -2, BPE 256",
                           ["wavelet=haar", "tokenizer.method=zerotree", "tokenizer.final_exponent=-2",
                            "tokenizer.bpe_vocab_size=256", "model.context=none"]),
    "zerotree-f3-bpe256": ("wavelet: zero-tree, haar, f = -3, BPE 256",
                           ["wavelet=haar", "tokenizer.method=zerotree", "tokenizer.final_exponent=-3",
                            "tokenizer.bpe_vocab_size=256", "model.context=none"]),
}
# The 1.6e14 points train in fp32, all of them, so that they compare like with like on any CPU: bf16
# autocast is emulated on CPUs without AVX512-BF16 (2.7x slower than fp32 on an Ice Lake core,
# benchmarks/train_speed.py, 2026-12-06), which would put one such point past a working day.
PRECISION = {1.6e14: "fp32"}  # budgets whose points override train.precision (default bf16)
# The completion stage is not part of the study: one small setting keeps it from costing a row's time.
LIGHT = ["complete.prefix_planes=[2]", "complete.images=20", "complete.completions=1"]
PREFIX = "cc-"
EVALUATE_FIGURE = "reports/evaluate/real_vs_generated.png"
app = typer.Typer(add_completion=False, no_args_is_help=True, help=__doc__)


def point_name(system: str, budget: float, seed: int = 0) -> str:
    return f"{PREFIX}{system}-{budget:g}".replace("e+", "e") + (f"-s{seed}" if seed else "")


def overrides(system: str, budget: float, seed: int = 0) -> list[str]:
    precision = [f"train.precision={PRECISION[budget]}"] if budget in PRECISION else []
    return SYSTEMS[system][1] + LIGHT + precision + [f"train.flops={budget:g}", f"train.seed={seed}"]


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


def copy_samples_figure(rev: str, path: Path) -> None:
    """The experiment's own per-class figure of real, tokenized, generated and tuned samples."""
    path.write_bytes(subprocess.run(["git", "show", f"{rev}:{EVALUATE_FIGURE}"], check=True,
                                    capture_output=True).stdout)


def row(system: str, exp: dict) -> dict:
    """The figures of one point that the table and the figure show."""
    m, files = exp["metrics"], exp["files"]
    trained = files.get("reports/train/metrics.json") or {}
    return {
        "system": system, "budget": exp["params"]["train"]["flops"], "seed": exp["params"]["train"]["seed"],
        "precision": exp["params"]["train"]["precision"],
        "flops": m["compute"]["train_flops"], "steps": trained.get("steps"), "minutes": m["compute"]["train_minutes"],
        "bits_per_image": m["likelihood"].get("test_bits_per_image"),
        "sample_images_per_s": m["compute"]["sample_images_per_s"], "commit": exp["baseline"],
        **scores(m),
        "extractor": m["extractors"]["inception"],
    }


def collect(record: Path, figures: Path) -> list[dict]:
    """Every finished point, system by system (in SYSTEMS order), budget by budget: this clone's
    experiments (their samples figure copied into `figures`), and the recorded rows of points it
    has not run."""
    found = experiments()
    rows = {}
    for system in SYSTEMS:
        for name in sorted(found):
            match = re.fullmatch(re.escape(PREFIX + system) + r"-([0-9.e]+)(-s\d+)?", name)
            if match:
                r = row(system, found[name])
                rows[r["system"], r["budget"], r["seed"]] = r
                copy_samples_figure(found[name]["rev"], figures / f"samples_{name}.png")
    for r in json.loads(record.read_text()) if record.exists() else []:
        rows.setdefault((r["system"], r["budget"], r["seed"]), r)
    return sorted(rows.values(), key=lambda r: (list(SYSTEMS).index(r["system"]), r["budget"], r["seed"]))


@app.command()
def table(out: Path = typer.Option(Path("reports/compute_curves.md")),
          figure: Path = typer.Option(Path("reports/compute_curves.png")),
          record: Path = typer.Option(Path("reports/compute_curves.json"), help="every finished point's row"),
          note: Annotated[str, typer.Option(help="how the points ran (device, threads), printed under the title")] = "",
          samples: Annotated[Path, typer.Option(help="folder of each point's samples figure")] = Path(
              "reports/compute_curves")
          ) -> None:
    """Write the table, the figure and the record from `dvc exp show --json` and the record."""
    samples.mkdir(parents=True, exist_ok=True)
    rows = collect(record, samples)
    if not rows:
        sys.exit("no cc-* experiments with metrics and no recorded rows; run `python -m "
                 "pipeline.studies.compute_curves queue` and `dvc queue start`")
    record.write_text(json.dumps(rows, indent=1) + "\n")
    done = {(r["system"], r["budget"], r["seed"]) for r in rows}
    missing = [point_name(*p) for p in points(list(SYSTEMS), BUDGETS) if p not in done]
    first = rows[0]
    header = ("| system | training FLOPs | seed | precision | steps | training min | test bits/image | FID | "
              "FID, tuned | classifier-FID | classifier-FID, tuned | cond. acc. | cond. acc., tuned | sampling img/s | "
              "real / ceiling classifier-FID | real / ceiling FID | real cond. acc. | commit |")
    lines = [f"# Quality against training compute ({date.today()}, {platform.machine()} CPU, generated by "
             "`python -m pipeline.studies.compute_curves table` from `dvc exp show` and reports/compute_curves.json)", "", *([note, ""] if note else []),
             "Floors, per row: 'real' are the real training images, 'ceiling' the same images through the row's "
             "language. The domain classifier (classifier-FID, conditional accuracy) is retrained in each clone, "
             "and its weights differ from one CPU to another, so its figures compare within rows of equal real "
             "floors; Inception FID uses fixed weights. 'tuned': the row's best decoding setting, "
             "chosen by classifier-FID on the validation half of the test split; the other figures use the shared "
             "settings (top-p 0.6, guidance 2; 50 DDIM steps for diffusion). 500 samples against 500 test images. "
             f"FID: {first['extractor']}; classifier-FID: the domain classifier's features. 'precision': training "
             "arithmetic (bf16 autocast or fp32; the 1.6e14 points all train in fp32). 'commit': the code the "
             "point ran.", "", header, "|" + "---|" * (header.count("|") - 1)]
    for r in rows:
        lines.append("| " + " | ".join([
            SYSTEMS[r["system"]][0], f"{r['flops']:.3g}", str(r["seed"]), r["precision"], str(r["steps"]),
            fmt(r["minutes"]),
            fmt(r["bits_per_image"]), fmt(r["generated_inception"]), fmt(r["tuned_inception"]),
            fmt(r["generated_classifier"]), fmt(r["tuned_classifier"]), fmt(r["generated_accuracy"], 3),
            fmt(r["tuned_accuracy"], 3), fmt(r["sample_images_per_s"]),
            f"{fmt(r['real_classifier'])} / {fmt(r['tokenizer_classifier'])}",
            f"{fmt(r['real_inception'])} / {fmt(r['tokenizer_inception'])}", fmt(r["real_accuracy"], 3),
            r["commit"]]) + " |")
    shown = sorted(path.stem.removeprefix("samples_") for path in samples.glob("samples_*.png"))
    lines += ["", f"Samples (per class: real, tokenized, generated at the shared and at the tuned settings) in "
              f"{samples}/samples_<point>.png, for the points whose experiments were in a clone that ran `table`: "
              + (", ".join(shown) or "none") + "."]
    if missing:
        lines += ["", "Not run (no finished experiment): " + ", ".join(missing)]
    out.write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    _figure(rows, figure)


PANELS = (("tuned_classifier", "classifier-FID, tuned (lower is better)", "tokenizer_classifier", "real_classifier"),
          ("tuned_inception", "FID, tuned (lower is better)", "tokenizer_inception", "real_inception"),
          ("tuned_accuracy", "conditional accuracy, tuned", "tokenizer_accuracy", "real_accuracy"),
          ("bits_per_image", "test bits per image (transformers)", None, None),
          ("sample_images_per_s", "sampling images/s (one thread)", None, None))


def _budget_means(rows: list[dict], key: str) -> tuple[list[float], list[float]]:
    """The budgets where rows have `key`, and its mean over their rows at each."""
    budgets = sorted({r["budget"] for r in rows if r[key] is not None})
    return budgets, [np.mean([r[key] for r in rows if r["budget"] == b and r[key] is not None]) for b in budgets]


def _figure(rows: list[dict], path: Path) -> None:
    """Each metric against the training budget in FLOPs (log x; each point's counted FLOPs are in
    the table, within 1% of its budget): a line per system through its seeds' mean,
    every seed a marker, the system's tokenizer ceiling dashed in its colour, real data grey; the
    floors are drawn per budget, as the classifier's figures move with the CPU that trained it."""
    from .. import figures

    plt = figures.plt
    fig, axes = plt.subplots(2, 3, figsize=(15, 8.5))
    axes = axes.reshape(-1)
    for ax, (key, label, ceiling, real) in zip(axes, PANELS):
        for colour, system in zip(plt.rcParams["axes.prop_cycle"].by_key()["color"], SYSTEMS):
            mine = [r for r in rows if r["system"] == system and r[key] is not None]
            if not mine:
                continue
            ax.plot(*_budget_means(mine, key), "-o", color=colour, markersize=3, label=SYSTEMS[system][0])
            ax.scatter([r["budget"] for r in mine], [r[key] for r in mine], color=colour, s=18, zorder=3)
            if ceiling:
                ax.plot(*_budget_means(mine, ceiling), color=colour, linestyle="--", linewidth=1)
        if real:
            ax.plot(*_budget_means(rows, real), color="grey", linestyle=":", linewidth=1.2,
                    label="real data (per budget: the classifier moves with the CPU)")
        ax.set_xscale("log")
        ax.set_xlim(min(BUDGETS) / 1.6, max(BUDGETS) * 1.6)
        ax.set_xticks(BUDGETS, [f"{b:.2g}" for b in BUDGETS])
        ax.xaxis.set_minor_formatter(plt.NullFormatter())
        if key in ("tuned_classifier", "tuned_inception"):
            ax.set_yscale("log")
        ax.set_xlabel("training FLOPs")
        ax.set_title(label, fontsize=9)
    handles, names = axes[0].get_legend_handles_labels()
    axes[-1].axis("off")
    axes[-1].legend(handles + [plt.Line2D([], [], color="black", linestyle="--", linewidth=1)],
                    names + ["tokenizer ceiling (dashed, the system's colour)"], loc="center", fontsize=8)
    fig.suptitle("Quality against training compute (MNIST; markers: seeds, lines: their mean)", fontsize=10)
    fig.tight_layout()
    figures.save(fig, path)


if __name__ == "__main__":
    app()
