"""The ablation table: the paper's open questions answered at equal training compute.

    python -m pipeline.studies.ablations queue      # dvc exp run --queue, one experiment per row
    dvc queue start                         # run them (dvc queue status to follow)
    python -m pipeline.studies.ablations table      # reports/ablations.md and reports/ablations.png

Every row is an experiment named `abl-<row>`, run with the same training budget in FLOPs
(`train.flops`, counted with FlopCounterMode) from the same conf/, through the same stages; the
table is built from DVC's own records (`dvc exp show --json`), so what it says is what ran. Each
row is reported at the shared decoding settings and at its own best setting (the tune stage's,
chosen on the validation half of the test split). The rows pin the language of the table's
default (haar, zero-block, f = -1) so they stay comparable when conf/ changes its default.
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

BUDGET = 4.0e13  # training FLOPs per row: about 590 steps of the pinned zero-block model, 5-6 minutes on 2 cores
PINNED = ["wavelet=haar", "tokenizer.method=zeroblock", "tokenizer.final_exponent=-1", "tokenizer.bpe_vocab_size=0",
          "model.context=none"]
ROWS = {  # row -> (name in the table, the overrides on top of the pinned default)
    "default": ("default (zero-block, haar, f = -1)", []),
    "sequence-positions": ("no wavelet positions", ["model.position=sequence"]),
    "both-positions": ("both positions", ["model.position=both"]),
    "unconditional": ("unconditional", ["model.condition=none"]),
    "zerotree": ("zero-tree", ["tokenizer.method=zerotree"]),
    "bior44": ("bior4.4", ["wavelet=bior4.4"]),
    "finer-planes": ("finer planes (f = -2)", ["tokenizer.final_exponent=-2"]),
    "pixels": ("pixels", ["tokenizer.method=pixels"]),
    "diffusion": ("diffusion (DDPM, DDIM sampling)", ["family=diffusion"]),
}
PREFIX = "abl-"
app = typer.Typer(add_completion=False, no_args_is_help=True, help=__doc__)


def overrides(row: str, budget: float) -> list[str]:
    _, changes = ROWS[row]
    changed = {change.split("=")[0] for change in changes}
    pinned = [] if row == "diffusion" else [o for o in PINNED if o.split("=")[0] not in changed]
    return pinned + changes + [f"train.flops={budget:g}"]


@app.command()
def queue(budget: float = typer.Option(BUDGET, help="training FLOPs per row"),
          rows: list[str] = typer.Option(list(ROWS), "--row", help="rows to queue (default: all)")) -> None:
    """Queue one experiment per row (`dvc queue start` runs them)."""
    for row in rows:
        command = ["dvc", "exp", "run", "--queue", "-n", PREFIX + row]
        for override in overrides(row, budget):
            command += ["-S", override]
        print(" ".join(command), flush=True)
        subprocess.run(command, check=True)


def experiments() -> dict[str, dict]:
    """name -> {params, metrics (reports/metrics.json), files (every metrics file), rev, baseline
    (the commit it ran from)} of every finished experiment (queued and running ones show their baseline's figures in `dvc exp show`,
    so only those `dvc exp list` knows are taken)."""
    listed = subprocess.run(["dvc", "exp", "list", "--all-commits"], check=True, capture_output=True,
                            text=True).stdout
    # "<baseline>:" lines, then "<rev> [<name>]" lines of that baseline's finished experiments.
    baselines = [line[:-1] for line in listed.splitlines() if line.endswith(":") and not line.startswith((" ", "\t"))]
    finished = set(re.findall(r"\[([^\]]+)\]", listed))
    if not baselines:
        return {}
    # Every commit experiments ran from (not only HEAD's), each alone (-n 1).
    command = ["dvc", "exp", "show", "--json", "-n", "1", *[arg for rev in baselines for arg in ("--rev", rev)]]
    shown = json.loads(subprocess.run(command, check=True, capture_output=True, text=True).stdout)
    found = {}
    for baseline in shown:
        for experiment in baseline.get("experiments") or []:
            revision = experiment["revs"][0]
            data = revision.get("data") or {}
            name = experiment.get("name") or revision.get("name")
            files = {path: entry.get("data") or {} for path, entry in (data.get("metrics") or {}).items()}
            if name in finished and files.get("reports/metrics.json"):
                found[name] = {"params": data["params"]["params.yaml"]["data"], "metrics": files["reports/metrics.json"],
                               "files": files, "rev": revision.get("rev", "")[:7],
                               "baseline": (baseline.get("rev") or "")[:7]}
    return found


def fmt(value, digits: int = 1) -> str:
    return "n/a" if value is None else f"{value:,.{digits}f}"


@app.command()
def table(out: Path = typer.Option(Path("reports/ablations.md")),
          figure: Path = typer.Option(Path("reports/ablations.png")),
          note: Annotated[str, typer.Option(help="how the rows ran (device, threads), printed under the title")] = ""
          ) -> None:
    """Write the table and the figure from `dvc exp show --json`."""
    found = experiments()
    rows = [(row, found[PREFIX + row]) for row in ROWS if PREFIX + row in found]
    if not rows:
        sys.exit("no abl-* experiments with metrics; run `python -m pipeline.studies.ablations queue` and `dvc queue start`")
    missing = [row for row in ROWS if PREFIX + row not in found]
    first = rows[0][1]["metrics"]
    header = ("| row | test bits/image | tokenizer-ceiling FID | FID | FID, tuned | classifier-FID | classifier-FID, "
              "tuned | cond. acc. | cond. acc., tuned | tuned decoding | training FLOPs | training min | sampling img/s |")
    lines = [f"# Ablations at equal training compute ({date.today()}, {platform.machine()} CPU, generated by "
             "`python -m pipeline.studies.ablations table` from `dvc exp show`)", "", *([note, ""] if note else []),
             "Floors: real training images score classifier-FID {real_c} and FID {real_i}; a row's "
             "tokenizer ceiling is the same images through its language. 'tuned': the row's best decoding "
             "setting, chosen by classifier-FID on the validation half of the test split; the other figures "
             "use the shared settings (top-p 0.6, guidance 2; 50 DDIM steps for diffusion). FID: "
             "{extractor}; classifier-FID: the domain classifier's features.".format(
                 real_c=fmt(first["real_floor"]["classifier"]["fid"]), real_i=fmt(first["real_floor"]["inception"]["fid"]),
                 extractor=first["extractors"]["inception"]), "",
             header, "|" + "---|" * (header.count("|") - 1)]
    for row, exp in rows:
        m = exp["metrics"]
        tuned = m["tuned"]["decoding"]
        setting = (f"guidance {tuned['cfg_scale']:g}, " + (f"top-p {tuned['top_p']:g}" if row != "diffusion"
                   else f"{tuned['diffusion_steps']} steps"))
        lines.append("| " + " | ".join([
            ROWS[row][0], fmt(m["likelihood"].get("test_bits_per_image")), fmt(m["tokenizer_floor"]["inception"]["fid"]),
            fmt(m["generated"]["inception"]["fid"]), fmt(m["tuned"]["inception"]["fid"]),
            fmt(m["generated"]["classifier"]["fid"]), fmt(m["tuned"]["classifier"]["fid"]),
            fmt(m["generated"]["conditional_accuracy"], 3), fmt(m["tuned"]["conditional_accuracy"], 3), setting,
            f"{m['compute']['train_flops']:.3g}", fmt(m["compute"]["train_minutes"]),
            fmt(m["compute"]["sample_images_per_s"])]) + " |")
    if missing:
        lines += ["", "Not run yet: " + ", ".join(missing)]
    out.write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    quality_bars([f"{ROWS[row][0]}\n{exp['metrics']['compute']['train_flops']:.2g} FLOPs" for row, exp in rows],
                 [scores(exp["metrics"]) for _, exp in rows], figure,
                 "Ablations at equal training compute: quality per row against its tokenizer ceiling and real data")


def scores(m: dict) -> dict:
    """One experiment's quality figures, flat: FID and classifier-FID (`<kind>_inception`,
    `<kind>_classifier`) and conditional accuracy (`<kind>_accuracy`) of its samples at the shared
    decoding ('generated') and the tuned one, and of its tokenizer and real-data floors."""
    kinds = {"generated": m["generated"], "tuned": m["tuned"], "tokenizer": m.get("tokenizer_floor") or {},
             "real": m["real_floor"]}
    return {**{f"{kind}_{key}": (found.get(key) or {}).get("fid") for kind, found in kinds.items()
               for key in ("inception", "classifier")},
            **{f"{kind}_accuracy": found.get("conditional_accuracy") for kind, found in kinds.items()}}


def quality_bars(labels: list[str], rows: list[dict], path: Path, title: str) -> None:
    """Quality per row at one compute (rows: `scores` dicts): a bar at the shared decoding, a
    cross at the row's tuned one, a bar mark at its tokenizer ceiling and a dashed line at real
    data. (Every row trains on the same FLOPs budget, so a compute axis would put them all on one point.)"""
    from .. import figures

    plt = figures.plt
    y = np.arange(len(rows))[::-1]
    fig, axes = plt.subplots(1, 2, figsize=(12, 0.55 * len(rows) + 1.6), sharey=True)
    for ax, (key, label) in zip(axes, (("classifier", "classifier-FID"), ("inception", "FID"))):
        def column(kind: str) -> np.ndarray:
            return np.array([r[f"{kind}_{key}"] or np.nan for r in rows], dtype=float)

        shared, tuned, ceiling = column("generated"), column("tuned"), column("tokenizer")
        ax.barh(y, shared, color="tab:blue", alpha=0.6, label="shared decoding")
        ax.scatter(tuned, y, marker="x", color="black", zorder=3, label="tuned decoding")
        ax.scatter(ceiling, y, marker="|", s=300, color="tab:red", zorder=3, label="tokenizer ceiling")
        floor = rows[0][f"real_{key}"]
        if floor is not None:
            ax.axvline(floor, color="grey", linestyle="--", linewidth=1, label="real data")
        ax.set_xscale("log")
        ticks = [t for t in (5, 10, 20, 50, 100, 200, 500, 1000, 2000) if t <= np.nanmax([shared, tuned]) * 1.5]
        ax.set_xticks(ticks, [str(t) for t in ticks])
        ax.xaxis.set_minor_formatter(plt.NullFormatter())
        ax.set_xlim(left=0.8 * np.nanmin(np.concatenate([shared, tuned, ceiling, [floor or np.inf]])))
        ax.set_xlabel(f"{label} (lower is better)")
        ax.set_yticks(y, labels, fontsize=8)
    handles, names = axes[0].get_legend_handles_labels()
    fig.legend(handles, names, loc="lower center", ncol=4, fontsize=8)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout(rect=(0, 0.07, 1, 0.95))
    figures.save(fig, path)


if __name__ == "__main__":
    app()
