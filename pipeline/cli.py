"""`python -m pipeline <stage>`: one command per DVC stage, each reading params.yaml.

Each stage module declares the params it reads (`PARAMS`, the same keys as its `params:` in
dvc.yaml) and a `main(params, device)`. The params are validated before any work starts; a bad
value prints one line and exits with code 2. The failures a user can act on (a missing or
corrupt input, a diverged run, no GPU for a GPU profile) print one line and exit with code 1.
"""
from __future__ import annotations

import importlib
import sys
from pathlib import Path

import typer

from . import params as params_mod

app = typer.Typer(add_completion=False, no_args_is_help=True,
                  help="Stages of the wavelet-token pipeline (dvc.yaml runs these).")

# stage -> (help, takes a device)
STAGES = {
    "download": ("Fetch and verify the data set's images and labels into data/raw/<dataset>/.", False),
    "dwt": ("DWT of every image into data/dwt/, with a perfect-reconstruction check.", False),
    "tokenize": ("Token sequences of every image into Parquet shards in data/tokens/.", False),
    "train": ("Train the transformer on data/tokens; the model goes to data/model/.", True),
    "sample": ("Generate class-conditional samples from data/model into data/samples/.", True),
    "tune": ("This model's best decoding setting from a small grid (validation half of the test split), and its samples.", True),
    "complete": ("Real test images' first bit-planes completed by the model: PSNR, FID and a figure per k.", True),
    "train_classifier": ("Train the domain classifier (evaluation's feature extractor) into data/classifier/.", True),
    "evaluate": ("FID, KID, IS, precision/recall, conditional accuracy and NLL into reports/metrics.json.", True),
}


def run_stage(name: str, params_path: Path, device: str) -> None:
    """Validate the stage's params, run it, and turn foreseeable failures into one line."""
    try:
        module = importlib.import_module(f"{__package__}.stages.{name}")
        p = params_mod.load(params_path, module.PARAMS)
        if "threads" in module.PARAMS:  # before any torch work: the figures depend on the count
            # Reached by name, as the stages are: each stage that declares threads imports
            # devices itself (a test checks), and the stages without torch must not depend on it.
            importlib.import_module(f"{__package__}.devices").use_threads(p.threads)
        module.main(p, device)
    except params_mod.ParamError as error:
        print(f"error: {error}", file=sys.stderr)
        raise typer.Exit(2) from None
    except (RuntimeError, ValueError, OSError) as error:
        print(f"error: {' '.join(str(error).split())}", file=sys.stderr)
        raise typer.Exit(1) from None


def _command(name: str, help_text: str, takes_device: bool):
    params_option = typer.Option(Path("params.yaml"), "--params", help="params file to read")
    if takes_device:
        def command(params: Path = params_option,
                    device: str = typer.Option("auto", help="auto | cuda | cpu (or set WAVELET_DEVICE); "
                                                            "not a tracked param")) -> None:
            run_stage(name, params, device)
    else:
        def command(params: Path = params_option) -> None:
            run_stage(name, params, "cpu")
    command.__doc__ = help_text
    app.command(name)(command)


for _name, (_help, _takes_device) in STAGES.items():
    _command(_name, _help, _takes_device)
