"""params.yaml: loading and validation, in one place.

Each stage asks for the groups it reads; every value is checked before any work starts, and a
bad value raises ParamError, which the CLI prints as one line and turns into exit code 2.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import yaml

DATASETS = ("mnist", "fashion_mnist")
TOKENIZER_METHODS = ("zeroblock", "zerotree")
INITIAL_THRESHOLDS = ("per_image", "uniform")
PRECISIONS = ("bf16", "fp32")


class ParamError(ValueError):
    """A value in params.yaml that is not allowed."""

    def __init__(self, key: str, value: Any, allowed: str):
        self.key, self.value, self.allowed = key, value, allowed
        super().__init__(f"params.yaml: {key}={value!r} is not allowed; expected {allowed}")


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
    shard_size: int

    def validate(self, g: str) -> None:
        _check_choice(f"{g}.method", self.method, TOKENIZER_METHODS)
        # Below 2^-12 the planes stop carrying information for 8-bit images, and above 2^3 the
        # first plane (threshold 8 for uniform thresholds) is already the last.
        _check_int(f"{g}.final_exponent", self.final_exponent, lo=-12, hi=3)
        _check_choice(f"{g}.initial_threshold", self.initial_threshold, INITIAL_THRESHOLDS)
        _check_int(f"{g}.shard_size", self.shard_size, lo=1)


@dataclass(frozen=True)
class ModelParams(_Group):
    n_layer: int
    n_embd: int
    n_head: int
    dropout: float
    position: str
    condition: str

    def validate(self, g: str) -> None:
        from .model import CONDITIONS, POSITIONS

        _check_int(f"{g}.n_layer", self.n_layer, lo=1)
        _check_int(f"{g}.n_head", self.n_head, lo=1)
        _check_int(f"{g}.n_embd", self.n_embd, lo=1)
        if self.n_embd % self.n_head:
            raise ParamError(f"{g}.n_embd", self.n_embd, f"a multiple of {g}.n_head={self.n_head}")
        self._float(g, "dropout", lo=0.0, hi=0.9)
        _check_choice(f"{g}.position", self.position, POSITIONS)
        _check_choice(f"{g}.condition", self.condition, CONDITIONS)


@dataclass(frozen=True)
class TrainParams(_Group):
    steps: int
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


@dataclass(frozen=True)
class Params:
    dataset: str
    wavelet: str
    groups: dict

    @property
    def dwt(self) -> DwtParams:
        return self.groups["dwt"]

    @property
    def tokenizer(self) -> TokenizerParams:
        return self.groups["tokenizer"]

    @property
    def model(self) -> ModelParams:
        return self.groups["model"]

    @property
    def train(self) -> TrainParams:
        return self.groups["train"]

    @property
    def sample(self) -> SampleParams:
        return self.groups["sample"]

    @property
    def train_classifier(self) -> TrainClassifierParams:
        return self.groups["train_classifier"]

    @property
    def eval(self) -> EvalParams:
        return self.groups["eval"]


GROUPS = {
    "dwt": DwtParams,
    "tokenizer": TokenizerParams,
    "model": ModelParams,
    "train": TrainParams,
    "sample": SampleParams,
    "train_classifier": TrainClassifierParams,
    "eval": EvalParams,
}


BASE_PROFILE = "cpu"


def apply_profile(raw: dict) -> dict:
    """The groups as written are the `cpu` profile; `profile: NAME` lays `profiles.NAME` over them
    (so under a profile its own values win: override them as `-S profiles.NAME.train.steps=...`)."""
    profiles = raw.get("profiles") or {}
    if not isinstance(profiles, dict):
        raise ParamError("profiles", profiles, "a mapping of profile names to group overrides")
    name = raw.get("profile", BASE_PROFILE)
    _check_choice("profile", name, [BASE_PROFILE, *profiles])
    if name == BASE_PROFILE:
        return raw
    merged = {key: (dict(value) if isinstance(value, dict) else value) for key, value in raw.items()}
    for group, overrides in (profiles[name] or {}).items():
        if group not in GROUPS or not isinstance(overrides, dict):
            raise ParamError(f"profiles.{name}.{group}", overrides, "a mapping for one of the groups " + ", ".join(GROUPS))
        merged[group] = {**_group(raw, group), **overrides}
    return merged


def load(path: str | Path = "params.yaml", groups: tuple[str, ...] = ()) -> Params:
    """Read params.yaml and validate the top-level keys plus the named groups."""
    path = Path(path)
    try:
        raw = yaml.safe_load(path.read_text())
    except FileNotFoundError:
        raise ParamError("params file", str(path), "an existing YAML file") from None
    if not isinstance(raw, dict):
        raise ParamError("params file", str(path), "a YAML mapping")
    raw = apply_profile(raw)
    dataset = _check_choice("dataset", raw.get("dataset"), DATASETS)
    wavelet = raw.get("wavelet")
    valid_wavelets = _discrete_wavelets()
    if wavelet not in valid_wavelets:
        raise ParamError("wavelet", wavelet, "a discrete PyWavelets wavelet: " + ", ".join(valid_wavelets))
    built = {name: _build(GROUPS[name], raw, name) for name in groups}
    return Params(dataset=dataset, wavelet=wavelet, groups=built)
