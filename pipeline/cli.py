"""`python -m pipeline <stage>`: one command per DVC stage, each reading params.yaml.

Params are validated before any work starts; a bad value prints one line and exits with code 2.
"""
from __future__ import annotations

import functools
import sys
from pathlib import Path

import typer

from . import params as params_mod

app = typer.Typer(add_completion=False, no_args_is_help=True,
                  help="Stages of the wavelet-token pipeline (dvc.yaml runs these).")
ParamsOption = typer.Option(Path("params.yaml"), "--params", help="params file to read")


def stage(func):
    """Turn the errors a user can act on into one line on stderr and a non-zero exit code."""

    @functools.wraps(func)
    def wrapper(*args, **kwargs):
        try:
            return func(*args, **kwargs)
        except params_mod.ParamError as error:
            print(f"error: {error}", file=sys.stderr)
            raise typer.Exit(2) from None
        except (RuntimeError, ValueError, FileNotFoundError) as error:
            print(f"error: {error}", file=sys.stderr)
            raise typer.Exit(1) from None

    return wrapper


@app.command()
@stage
def download(params: Path = ParamsOption) -> None:
    """Fetch and verify the dataset's IDX files into data/raw/<dataset>/."""
    from . import download as stage_mod

    p = params_mod.load(params)
    stage_mod.run(p.dataset)


@app.command()
@stage
def dwt(params: Path = ParamsOption) -> None:
    """DWT of every image into data/dwt/, with a perfect-reconstruction check."""
    from . import dwt as stage_mod

    p = params_mod.load(params, ("dwt",))
    stage_mod.run(p.dataset, p.wavelet, p.dwt.limit)


@app.command()
@stage
def tokenize(params: Path = ParamsOption) -> None:
    """Wavelet-language sequences of every image into Parquet shards in data/tokens/."""
    from . import tokenize as stage_mod

    p = params_mod.load(params, ("tokenizer",))
    stage_mod.run(p)


DeviceOption = typer.Option("auto", help="auto | cuda | cpu (or set WAVELET_DEVICE); not a tracked param")


@app.command()
@stage
def train(params: Path = ParamsOption, device: str = DeviceOption) -> None:
    """Train the wavelet transformer on data/tokens; the model goes to data/model/."""
    from . import train as stage_mod

    p = params_mod.load(params, ("model", "train"))
    stage_mod.run(p, device)


@app.command()
@stage
def sample(params: Path = ParamsOption, device: str = DeviceOption) -> None:
    """Generate class-conditional samples from data/model into data/samples/."""
    from . import sample as stage_mod

    p = params_mod.load(params, ("sample",))
    stage_mod.run(p, device)


@app.command("train_classifier")
@stage
def train_classifier(params: Path = ParamsOption, device: str = DeviceOption) -> None:
    """Train the domain classifier (feature extractor for evaluation) into data/classifier/."""
    from . import train_classifier as stage_mod

    p = params_mod.load(params, ("train_classifier",))
    stage_mod.run(p, device)


@app.command()
@stage
def evaluate(params: Path = ParamsOption, device: str = DeviceOption) -> None:
    """FID, KID, IS, precision/recall, conditional accuracy and NLL into reports/metrics.json."""
    from . import evaluate as stage_mod

    p = params_mod.load(params, ("eval",))
    stage_mod.run(p, device)
