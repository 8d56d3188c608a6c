"""params.yaml: loading and validation, in one place.

params.yaml is composed from conf/ by DVC (Hydra): conf/config.yaml holds every choice with the
cpu profile's values, conf/profile/<name>.yaml lays a profile over them, and `-S key=value`
overrides win over both. So params.yaml always holds the values that ran.

Each stage declares the keys it reads (`PARAMS`, the same as its params in dvc.yaml); those are
checked before any work starts and nothing else can be read. A bad value raises ParamError, which
the CLI prints as one line and turns into exit code 2; so does an unknown key.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import yaml

DATASETS = ("mnist", "fashion_mnist")
TOKENIZER_METHODS = ("zeroblock", "zerotree", "pixels")
INITIAL_THRESHOLDS = ("per_image", "uniform")
PRECISIONS = ("bf16", "fp32")
FAMILIES = ("transformer", "diffusion")  # model.family: the wavelet transformer, or the diffusers baseline
PROFILES = ("cpu", "gpu")  # conf/profile/<name>.yaml
POSITIONS = ("wavelet", "sequence", "both")  # what tells the model where a token sits
CONDITIONS = ("class", "none")
# BPE vocabulary bounds: more ids than the wavelet language's 8 (pipeline.grammar.VOCAB_SIZE), at
# most what uint16 holds (pipeline.bpe.MAX_VOCAB); kept here so that loading params stays light,
# and equal to those by a test.
BPE_BASE_VOCAB, BPE_MAX_VOCAB = 8, 1 << 16


class ParamError(ValueError):
    """A value in params.yaml that is not allowed."""

    def __init__(self, key: str, value: Any, allowed: str):
        self.key, self.value, self.allowed = key, value, allowed
        super().__init__(f"params.yaml: {key}={value!r} is not allowed; expected {allowed}")


class ParamsFileError(ParamError):
    """params.yaml itself cannot be read as a mapping of params."""

    def __init__(self, path: Path, problem: str):
        ValueError.__init__(self, f"{path}: {problem}")


def _discrete_wavelets() -> list[str]:
    import pywt

    return pywt.wavelist(kind="discrete")


def _check_int(key: str, value: Any, lo: int | None = None, hi: int | None = None) -> int:
    bounds = f"an integer{'' if lo is None else f' >= {lo}'}{'' if hi is None else f' <= {hi}'}"
    if isinstance(value, bool) or not isinstance(value, int):
        raise ParamError(key, value, bounds)
    if (lo is not None and value < lo) or (hi is not None and value > hi):
        raise ParamError(key, value, bounds)
    return value


def _check_float(key: str, value: Any, lo: float | None = None, hi: float | None = None,
                 lo_open: bool = False) -> float:
    op = ">" if lo_open else ">="
    bounds = f"a number{'' if lo is None else f' {op} {lo}'}{'' if hi is None else f' <= {hi}'}"
    if isinstance(value, str):  # YAML reads 4e-4 (no dot) as a string
        try:
            value = float(value)
        except ValueError:
            raise ParamError(key, value, bounds) from None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ParamError(key, value, bounds)
    if lo is not None and (value <= lo if lo_open else value < lo):
        raise ParamError(key, value, bounds)
    if hi is not None and value > hi:
        raise ParamError(key, value, bounds)
    return float(value)


def _check_choice(key: str, value: Any, choices: tuple[str, ...] | list[str]) -> str:
    if value not in choices:
        raise ParamError(key, value, "one of " + ", ".join(choices))
    return value


def _check_bool(key: str, value: Any) -> bool:
    if not isinstance(value, bool):
        raise ParamError(key, value, "true or false")
    return value


def _check_list(key: str, values: Any, check) -> list:
    if not isinstance(values, list) or not values:
        raise ParamError(key, values, "a non-empty list")
    return [check(f"{key}[{i}]", value) for i, value in enumerate(values)]


def _check_limit(key: str, value: Any) -> int | None:
    """A count of images to keep, or null for all of them."""
    if value is None:
        return None
    return _check_int(key, value, lo=1)


class _Group:
    def _float(self, group: str, name: str, **bounds) -> None:
        """Check a float field and store it as a float (YAML reads `4e-4` as a string)."""
        object.__setattr__(self, name, _check_float(f"{group}.{name}", getattr(self, name), **bounds))


def _group(raw: dict, name: str) -> dict:
    group = raw.get(name)
    if not isinstance(group, dict):
        raise ParamError(name, group, "a mapping of the group's keys (see params.yaml in the repository)")
    return group


def _build(cls, raw: dict, name: str):
    """Instantiate a group dataclass, refusing unknown and missing keys (typos must not pass)."""
    group = _group(raw, name)
    known = {f.name for f in fields(cls)}
    for key in group:
        if key not in known:
            raise ParamError(f"{name}.{key}", group[key], "no such key; known keys: " + ", ".join(sorted(known)))
    missing = known - set(group)
    if missing:
        key = sorted(missing)[0]
        raise ParamError(f"{name}.{key}", None, "a value (the key is missing)")
    obj = cls(**group)
    obj.validate(name)
    return obj


@dataclass(frozen=True)
class DwtParams(_Group):
    limit: int | None  # keep the first N images of each split (null: all); for quick runs and CI

    def validate(self, g: str) -> None:
        _check_limit(f"{g}.limit", self.limit)


@dataclass(frozen=True)
class TokenizerParams(_Group):
    method: str
    final_exponent: int
    initial_threshold: str
    pixel_levels: int
    shard_size: int
    bpe_vocab_size: int  # 0: the plain language; else byte-pair merges up to this many ids

    def validate(self, g: str) -> None:
        _check_choice(f"{g}.method", self.method, TOKENIZER_METHODS)
        # Below 2^-12 the planes stop carrying information for 8-bit images, and above 2^3 the
        # first plane (threshold 8 for uniform thresholds) is already the last.
        _check_int(f"{g}.final_exponent", self.final_exponent, lo=-12, hi=3)
        _check_choice(f"{g}.initial_threshold", self.initial_threshold, INITIAL_THRESHOLDS)
        _check_int(f"{g}.pixel_levels", self.pixel_levels, lo=2, hi=256)
        _check_int(f"{g}.shard_size", self.shard_size, lo=1)
        size = _check_int(f"{g}.bpe_vocab_size", self.bpe_vocab_size, lo=0, hi=BPE_MAX_VOCAB)
        if 0 < size <= BPE_BASE_VOCAB:
            raise ParamError(f"{g}.bpe_vocab_size", size, f"0 (off), or {BPE_BASE_VOCAB + 1}..{BPE_MAX_VOCAB}: more "
                             f"ids than the {BPE_BASE_VOCAB} of the wavelet language")
        if size and self.method == "pixels":
            raise ParamError(f"{g}.bpe_vocab_size", size, "0 with tokenizer.method pixels (merges are of wavelet tokens)")


@dataclass(frozen=True)
class ModelParams(_Group):
    family: str
    n_layer: int
    n_embd: int
    n_head: int
    dropout: float
    position: str
    condition: str
    unet_channels: list

    def validate(self, g: str) -> None:
        _check_int(f"{g}.n_layer", self.n_layer, lo=1)
        _check_int(f"{g}.n_head", self.n_head, lo=1)
        _check_int(f"{g}.n_embd", self.n_embd, lo=1)
        if self.n_embd % self.n_head:
            raise ParamError(f"{g}.n_embd", self.n_embd, f"a multiple of {g}.n_head={self.n_head}")
        self._float(g, "dropout", lo=0.0, hi=0.9)
        _check_choice(f"{g}.position", self.position, POSITIONS)
        _check_choice(f"{g}.condition", self.condition, CONDITIONS)
        _check_choice(f"{g}.family", self.family, FAMILIES)
        _check_list(f"{g}.unet_channels", self.unet_channels, lambda k, v: _check_int(k, v, lo=8))
        for i, width in enumerate(self.unet_channels):
            if width % 8:
                raise ParamError(f"{g}.unet_channels[{i}]", width, "a multiple of 8 (the UNet's group norm)")
        if len(self.unet_channels) > 3:
            raise ParamError(f"{g}.unet_channels", self.unet_channels, "at most 3 widths (32 x 32 images halve "
                             "at each level but the last)")


@dataclass(frozen=True)
class TrainParams(_Group):
    steps: int
    flops: float | None
    batch_size: int
    lr: float
    weight_decay: float
    warmup_steps: int
    min_lr_ratio: float
    grad_clip: float
    cond_dropout: float
    grammar_mask: bool
    seed: int
    log_every: int
    eval_every: int
    eval_batches: int
    final_eval_images: int | None
    checkpoint_every: int
    precision: str
    compile: bool

    def validate(self, g: str) -> None:
        _check_int(f"{g}.steps", self.steps, lo=1)
        if self.flops is not None:
            self._float(g, "flops", lo=0.0, lo_open=True)
        _check_int(f"{g}.batch_size", self.batch_size, lo=1)
        self._float(g, "lr", lo=0.0, lo_open=True)
        self._float(g, "weight_decay", lo=0.0)
        _check_int(f"{g}.warmup_steps", self.warmup_steps, lo=0)
        self._float(g, "min_lr_ratio", lo=0.0, hi=1.0)
        self._float(g, "grad_clip", lo=0.0, lo_open=True)
        self._float(g, "cond_dropout", lo=0.0, hi=1.0)
        _check_bool(f"{g}.grammar_mask", self.grammar_mask)
        _check_int(f"{g}.seed", self.seed, lo=0)
        _check_int(f"{g}.log_every", self.log_every, lo=1)
        _check_int(f"{g}.eval_every", self.eval_every, lo=1)
        _check_int(f"{g}.eval_batches", self.eval_batches, lo=1)
        _check_limit(f"{g}.final_eval_images", self.final_eval_images)
        _check_int(f"{g}.checkpoint_every", self.checkpoint_every, lo=1)
        _check_choice(f"{g}.precision", self.precision, PRECISIONS)
        _check_bool(f"{g}.compile", self.compile)


@dataclass(frozen=True)
class SampleParams(_Group):
    classes: Any  # "all" or a list of class ids
    per_class: int
    batch_size: int
    temperature: float
    top_k: int
    top_p: float
    cfg_scale: float
    diffusion_steps: int
    seed: int

    def validate(self, g: str) -> None:
        if self.classes != "all" and not (
                isinstance(self.classes, list) and self.classes
                and all(isinstance(c, int) and not isinstance(c, bool) and c >= 0 for c in self.classes)):
            raise ParamError(f"{g}.classes", self.classes, "all, or a list of class ids such as [0, 3, 7]")
        _check_int(f"{g}.per_class", self.per_class, lo=1)
        _check_int(f"{g}.batch_size", self.batch_size, lo=1)
        self._float(g, "temperature", lo=0.0)
        _check_int(f"{g}.top_k", self.top_k, lo=0)
        self._float(g, "top_p", lo=0.0, hi=1.0, lo_open=True)
        self._float(g, "cfg_scale", lo=0.0)
        _check_int(f"{g}.diffusion_steps", self.diffusion_steps, lo=1, hi=1000)
        _check_int(f"{g}.seed", self.seed, lo=0)


@dataclass(frozen=True)
class TuneParams(_Group):
    cfg_scales: list
    top_ps: list
    diffusion_steps: list
    per_class: int
    reference_per_class: int
    seed: int

    def validate(self, g: str) -> None:
        object.__setattr__(self, "cfg_scales", _check_list(f"{g}.cfg_scales", self.cfg_scales,
                                                           lambda k, v: _check_float(k, v, lo=0.0)))
        object.__setattr__(self, "top_ps", _check_list(f"{g}.top_ps", self.top_ps,
                                                       lambda k, v: _check_float(k, v, lo=0.0, hi=1.0, lo_open=True)))
        _check_list(f"{g}.diffusion_steps", self.diffusion_steps, lambda k, v: _check_int(k, v, lo=1, hi=1000))
        _check_int(f"{g}.per_class", self.per_class, lo=2)
        _check_int(f"{g}.reference_per_class", self.reference_per_class, lo=2)
        _check_int(f"{g}.seed", self.seed, lo=0)


@dataclass(frozen=True)
class CompleteParams(_Group):
    prefix_planes: list
    images: int
    completions: int
    seed: int

    def validate(self, g: str) -> None:
        _check_list(f"{g}.prefix_planes", self.prefix_planes, lambda k, v: _check_int(k, v, lo=1))
        _check_int(f"{g}.images", self.images, lo=1)
        _check_int(f"{g}.completions", self.completions, lo=1)
        _check_int(f"{g}.seed", self.seed, lo=0)


@dataclass(frozen=True)
class TrainClassifierParams(_Group):
    epochs: int
    batch_size: int
    lr: float
    width: int
    seed: int

    def validate(self, g: str) -> None:
        _check_int(f"{g}.epochs", self.epochs, lo=1)
        _check_int(f"{g}.batch_size", self.batch_size, lo=1)
        self._float(g, "lr", lo=0.0, lo_open=True)
        _check_int(f"{g}.width", self.width, lo=1)
        _check_int(f"{g}.seed", self.seed, lo=0)


@dataclass(frozen=True)
class EvalParams(_Group):
    num_samples: int
    reference_images: int
    batch_size: int
    kid_subset_size: int
    inception_weights: str | None
    seed: int

    def validate(self, g: str) -> None:
        _check_int(f"{g}.num_samples", self.num_samples, lo=2)
        _check_int(f"{g}.reference_images", self.reference_images, lo=2, hi=10000)
        _check_int(f"{g}.batch_size", self.batch_size, lo=1)
        _check_int(f"{g}.kid_subset_size", self.kid_subset_size, lo=2)
        if self.inception_weights is not None and not isinstance(self.inception_weights, str):
            raise ParamError(f"{g}.inception_weights", self.inception_weights, "null or a file path")
        _check_int(f"{g}.seed", self.seed, lo=0)


TOP_LEVEL = {
    "profile": lambda value: _check_choice("profile", value, PROFILES),
    "dataset": lambda value: _check_choice("dataset", value, DATASETS),
    "wavelet": lambda value: _check_wavelet(value),
}
GROUPS = {
    "dwt": DwtParams,
    "tokenizer": TokenizerParams,
    "model": ModelParams,
    "train": TrainParams,
    "sample": SampleParams,
    "tune": TuneParams,
    "complete": CompleteParams,
    "train_classifier": TrainClassifierParams,
    "eval": EvalParams,
}


ALL_KEYS = (*TOP_LEVEL, *GROUPS)


def _check_wavelet(value: Any) -> str:
    valid = _discrete_wavelets()
    if value not in valid:
        raise ParamError("wavelet", value, "a discrete PyWavelets wavelet: " + ", ".join(valid))
    return value


class Params:
    """The validated values of the keys a stage declared (its `PARAMS`, also its param deps in
    dvc.yaml). Reading any other key is an error: a stage cannot depend on a value DVC does not
    track for it."""

    def __init__(self, values: dict[str, Any]):
        self._values = values

    def __getattr__(self, key: str) -> Any:
        values = self.__dict__.get("_values", {})
        if key in values:
            return values[key]
        if key in TOP_LEVEL or key in GROUPS:
            raise AttributeError(f"params key {key!r} was not declared by this stage (declared: "
                                 f"{', '.join(values)}); add it to the stage's PARAMS and dvc.yaml")
        raise AttributeError(key)


def read_yaml(path: str | Path) -> dict:
    path = Path(path)
    try:
        raw = yaml.safe_load(path.read_text())
    except FileNotFoundError:
        raise ParamsFileError(path, "does not exist; run from the repository root or pass --params") from None
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        problem = getattr(error, "problem", None) or str(error).splitlines()[0]
        raise ParamsFileError(path, f"is not valid YAML{where} ({problem}); fix it, or regenerate it from "
                              "conf/ (`dvc exp run` composes it)") from None
    if not isinstance(raw, dict):
        raise ParamsFileError(path, f"holds a {type(raw).__name__}, not a mapping of params")
    return raw


def load(path: str | Path = "params.yaml", keys: tuple[str, ...] = ()) -> Params:
    """Read params.yaml and validate the named top-level keys and groups (nothing else is read)."""
    raw = read_yaml(path)
    for key in raw:
        if key not in ALL_KEYS:  # a typo (here or in a conf/ profile) must not pass unnoticed
            raise ParamError(str(key), raw[key], "no such key; known keys: " + ", ".join(ALL_KEYS))
    values: dict[str, Any] = {}
    for key in keys:
        if key in TOP_LEVEL:
            values[key] = TOP_LEVEL[key](raw.get(key))
        elif key in GROUPS:
            values[key] = _build(GROUPS[key], raw, key)
        else:
            raise KeyError(f"no params key {key!r}")  # a programming error, not a user's
    return Params(values)
