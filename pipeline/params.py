"""params.yaml: its schema, loading and validation, in one place.

params.yaml is composed from conf/ by DVC (Hydra): conf/config.yaml holds every choice with the
cpu profile's values, conf/profile/<name>.yaml lays a profile over them, and `-S key=value`
overrides win over both. Each stage declares the keys it reads (`PARAMS`, the same as its params
in dvc.yaml); those are validated before any work starts and nothing else can be read. A bad value
or an unknown key raises ParamError, which the CLI prints as one line with exit code 2.

A few rules span keys, checked by `load` after the groups: dataset folder needs folder.path, a
published data set's images are what they are, every stage but download refuses images the
stages after it cannot carry yet (after dwt: grey only, until issue #20 brings colour), and a per-level
tokenizer.final_exponent has one value per decomposition level of image.size.

Each group is a frozen, strict pydantic dataclass refusing unknown keys (`dataclasses.asdict` and
`replace` work on it; `replace` validates again); `_param_error` words pydantic's first error.
"""
import re
from contextlib import suppress
from dataclasses import fields
from pathlib import Path
from typing import Annotated, Any, Literal, TypeVar

import yaml
from pydantic import (
    ConfigDict,
    Discriminator,
    Field,
    Tag,
    TypeAdapter,
    WrapValidator,
    model_validator,
)
from pydantic.dataclasses import dataclass
from pydantic.functional_validators import AfterValidator, BeforeValidator
from pydantic_core import PydanticCustomError, ValidationError

DATASETS = ("mnist", "fashion_mnist", "cifar10", "cifar10_jpeg", "folder")  # conf/dataset/<name>.yaml
# The images of the published data sets, (image.size, image.channels); folder converts to what image asks.
NATIVE_IMAGES = {"mnist": (28, 1), "fashion_mnist": (28, 1), "cifar10": (32, 3), "cifar10_jpeg": (32, 3)}
CHROMA = ("full", "half")
TOKENIZER_METHODS = ("zeroblock", "zerotree", "pixels")
INITIAL_THRESHOLDS = ("per_image", "uniform")
PRECISIONS = ("bf16", "fp32")
FAMILIES = ("transformer", "diffusion")  # model.family: the wavelet transformer, or the diffusers baseline
PROFILES = ("cpu", "gpu")  # conf/profile/<name>.yaml
POSITIONS = ("wavelet", "sequence", "both")  # what tells the model where a token sits
CONDITIONS = ("class", "none")
CONTEXTS = ("none", "scan")  # scan: the model also sees scan-state features (languages/context.py)
# BPE vocabulary bounds: more ids than the wavelet language's 8 (pipeline.languages.grammar.VOCAB_SIZE), at
# most what uint16 holds (pipeline.languages.bpe.MAX_VOCAB); kept here so that loading params stays light,
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


def _refuse(allowed: str, field: str | None = None):
    """Refuse a value, saying what is allowed; `field` names it in a rule about the whole group."""
    raise PydanticCustomError("not_allowed", "{allowed}", {"allowed": allowed, **({"field": field} if field else {})})


def _explained(allowed: str) -> WrapValidator:
    """Any failure of the annotated type reads as `allowed` (for types whose errors say little)."""
    def validate(value, handler):
        try:
            return handler(value)
        except ValidationError:
            _refuse(allowed)
    return WrapValidator(validate)


def _yaml_number(value: Any) -> Any:
    """YAML reads 4e-4 (no dot) as a string; it is a number all the same."""
    with suppress(ValueError):
        return float(value) if isinstance(value, str) else value
    return value


def _discrete_wavelet(value: str) -> str:
    import pywt  # here, so that loading params stays light

    valid = pywt.wavelist(kind="discrete")  # continuous wavelets cannot do a DWT
    if value not in valid:
        _refuse("a discrete PyWavelets wavelet: " + ", ".join(valid))
    return value


T = TypeVar("T")
Number = Annotated[float, BeforeValidator(_yaml_number), Field(allow_inf_nan=False)]
Count = Annotated[int, Field(ge=1)]
Seed = Annotated[int, Field(ge=0)]
Limit = Count | None  # a count of images to keep, or null for all of them
Positive = Annotated[Number, Field(gt=0.0)]
Share = Annotated[Number, Field(ge=0.0, le=1.0)]
TopP = Annotated[Number, Field(gt=0.0, le=1.0)]  # 1: off
Guidance = Annotated[Number, Field(ge=0.0)]  # 0: unconditional, 1: no guidance, > 1: guidance
DiffusionSteps = Annotated[int, Field(ge=1, le=1000)]  # DDIM steps within the 1000 of training
NonEmpty = Annotated[list[T], Field(min_length=1)]
# Below 2^-12 the planes stop carrying information for 8-bit images, and above 2^3 the first plane
# (threshold 8 for uniform thresholds) is already the last.
FinalExponent = Annotated[int, Field(ge=-12, le=3)]


def _per_level(values: list[int]) -> list[int]:
    if not values or values != sorted(values):
        _refuse("an integer -12..3, or a list of them, one per decomposition level from coarse to fine, "
                "non-decreasing (a coarse level keeps planes at least as fine as a finer one)")
    return values


def decomposition_levels(size: int) -> int:
    """The DWT levels of size x size images, padded to M x M (M = 2^m >= size) and transformed down
    to a 2 x 2 low-pass block: m - 1 (pipeline.wavelets.Geometry, equal by a test); 4 for 28 x 28."""
    return max(1, (size - 1).bit_length()) - 1


# One final exponent, or one per level. A tagged union, so that an error is the chosen member's
# alone; its tags are in the error's `loc`, not keys of params.yaml (`_param_error` drops them).
_UNION_TAGS = ("one", "per_level")
FinalExponents = Annotated[
    Annotated[FinalExponent, Tag("one")]
    | Annotated[list[FinalExponent], AfterValidator(_per_level), Tag("per_level")],
    Discriminator(lambda value: "per_level" if isinstance(value, list) else "one")]

_group = dataclass(frozen=True, config=ConfigDict(extra="forbid", strict=True))

TOP_LEVEL = {
    "profile": Literal[PROFILES],
    "dataset": Literal[DATASETS],
    "wavelet": Annotated[str, AfterValidator(_discrete_wavelet)],
    # torch's CPU figures depend on its intra-op thread count, so it is a param (conf/config.yaml).
    "threads": Count,
}


@_group
class ImageParams:
    size: Annotated[int, Field(ge=8, le=256)]  # height = width, in pixels
    channels: Annotated[Literal[1, 3], _explained("1 (grey) or 3 (RGB)")]


@_group
class FolderParams:  # dataset folder's; null for the other data sets
    path: str | None  # the folder of images (required with dataset folder)
    test_share: Annotated[Number, Field(gt=0.0, lt=1.0)]  # of each class, when the folder has no train/ and test/
    seed: Seed  # of that split


@_group
class DwtParams:
    limit: Limit  # keep the first N images of each split (null: all); for quick runs and CI
    chroma: Literal[CHROMA]  # colour images' chroma: full resolution, or halved (JPEG's 4:2:0)


@_group
class TokenizerParams:
    method: Literal[TOKENIZER_METHODS]
    # One f, or one per decomposition level coarse to fine (pipeline.languages.grammar)
    final_exponent: FinalExponents
    # Colour images: the chroma's, as final_exponent (per level: of the chroma's matrices), >= its lowest
    chroma_final_exponent: FinalExponents
    initial_threshold: Literal[INITIAL_THRESHOLDS]
    pixel_levels: Annotated[int, Field(ge=2, le=256)]
    shard_size: Count
    # 0: the plain language; else byte-pair merges of the wavelet tokens up to this many ids
    bpe_vocab_size: Annotated[int, Field(ge=0, le=BPE_MAX_VOCAB)]

    @model_validator(mode="after")
    def _merges(self):
        if 0 < self.bpe_vocab_size <= BPE_BASE_VOCAB:
            _refuse(f"0 (off), or {BPE_BASE_VOCAB + 1}..{BPE_MAX_VOCAB}: more ids than the {BPE_BASE_VOCAB} "
                    "of the wavelet language", "bpe_vocab_size")
        if self.bpe_vocab_size and self.method == "pixels":
            _refuse("0 with tokenizer.method pixels (merges are of wavelet tokens: add -S tokenizer.bpe_vocab_size=0)",
                    "bpe_vocab_size")
        return self


@_group
class ModelParams:
    family: Literal[FAMILIES]
    n_layer: Count
    n_embd: Count
    n_head: Count
    dropout: Annotated[Number, Field(ge=0.0, le=0.9)]
    position: Literal[POSITIONS]
    condition: Literal[CONDITIONS]
    context: Literal[CONTEXTS]
    # The UNet's widths per level: multiples of 8 for its group norm, and at most 3 levels
    # (the padded square, 32 x 32 for 28 x 28 images, halves at each level but the last).
    unet_channels: Annotated[NonEmpty[Annotated[int, Field(ge=8, multiple_of=8)]], Field(max_length=3)]

    @model_validator(mode="after")
    def _heads(self):
        if self.n_embd % self.n_head:
            _refuse(f"a multiple of model.n_head={self.n_head}", "n_embd")
        if self.family == "diffusion" and self.context != "none":
            _refuse("none with model.family diffusion (context features are the transformer's)", "context")
        return self


@_group
class TrainParams:
    steps: Count
    flops: Positive | None  # a training budget; when set it replaces steps
    batch_size: Count
    lr: Positive
    weight_decay: Annotated[Number, Field(ge=0.0)]
    warmup_steps: Seed
    min_lr_ratio: Share
    grad_clip: Positive
    cond_dropout: Share
    grammar_mask: bool
    seed: Seed
    log_every: Count
    eval_every: Count
    eval_batches: Count
    final_eval_images: Limit
    checkpoint_every: Count
    precision: Literal[PRECISIONS]
    compile: bool


@_group
class SampleParams:
    classes: Annotated[Literal["all"] | NonEmpty[Seed], _explained("all, or a list of class ids such as [0, 3, 7]")]
    per_class: Count
    batch_size: Count
    temperature: Annotated[Number, Field(ge=0.0)]  # 0: greedy
    top_k: Seed  # 0: off
    top_p: TopP
    cfg_scale: Guidance
    diffusion_steps: DiffusionSteps
    seed: Seed


@_group
class TuneParams:
    cfg_scales: NonEmpty[Guidance]
    top_ps: NonEmpty[TopP]
    diffusion_steps: NonEmpty[DiffusionSteps]
    per_class: Annotated[int, Field(ge=2)]
    reference_per_class: Annotated[int, Field(ge=2)]
    seed: Seed


@_group
class CompleteParams:
    prefix_planes: NonEmpty[Count]
    images: Count
    completions: Count
    seed: Seed


@_group
class TrainClassifierParams:
    epochs: Count
    batch_size: Count
    lr: Positive
    width: Count
    seed: Seed
    limit: Limit  # train on the first N training images (null: all); for quick runs and CI


@_group
class EvalParams:
    num_samples: Annotated[int, Field(ge=2)]
    reference_images: Annotated[int, Field(ge=2, le=10000)]  # MNIST's and FashionMNIST's test splits
    batch_size: Count
    kid_subset_size: Annotated[int, Field(ge=2)]
    inception: bool  # false: the Inception figures are null (evaluate and complete)
    inception_weights: str | None  # a local file, for machines without network
    seed: Seed


GROUPS = {"image": ImageParams, "folder": FolderParams, "dwt": DwtParams, "tokenizer": TokenizerParams,
          "model": ModelParams, "train": TrainParams, "sample": SampleParams, "tune": TuneParams,
          "complete": CompleteParams, "train_classifier": TrainClassifierParams, "eval": EvalParams}
NULLABLE_GROUPS = ("folder",)  # null when its data set is not chosen
ALL_KEYS = (*TOP_LEVEL, *GROUPS)
_TOP_LEVEL = {key: TypeAdapter(schema, config=ConfigDict(strict=True)) for key, schema in TOP_LEVEL.items()}

# pydantic's error types, as what params.yaml allows; `_param_error` fills the braces.
_ALLOWED = {
    "missing": "a value (the key is missing)", "unexpected_keyword_argument": "no such key; known keys: {known}",
    "int_type": "an integer", "int_from_float": "an integer", "float_type": "a number",
    "finite_number": "a finite number", "bool_type": "true or false", "string_type": "a string",
    "list_type": "a non-empty list", "too_short": "a non-empty list", "too_long": "at most {max_length} values",
    "literal_error": "one of {choices}", "multiple_of": "a multiple of {multiple_of}", "not_allowed": "{allowed}",
    "greater_than_equal": "{kind} >= {ge}", "greater_than": "{kind} > {gt}",
    "less_than_equal": "{kind} <= {le}", "less_than": "{kind} < {lt}",
}


def _param_error(key: str, error: ValidationError) -> ParamError:
    """pydantic's first error (an unknown key first: typos must not pass) as one ParamError:
    the dotted key from its `loc`, the user's value from its `input`, and what is allowed from its
    `type` and `ctx`."""
    first = sorted(error.errors(), key=lambda e: e["type"] != "unexpected_keyword_argument")[0]
    loc, value, ctx = first["loc"], first["input"], dict(first.get("ctx") or {})
    if "field" in ctx:  # a rule about the whole group (a model validator) that names one field
        loc, value = (*loc, ctx["field"]), value.kwargs[ctx["field"]]
    if first["type"] == "missing":
        value = None
    bound = next((ctx[name] for name in ("ge", "gt", "le", "lt") if name in ctx), None)
    ctx.update(kind="a number" if isinstance(bound, float) else "an integer",  # float bounds are written 0.0
               choices=", ".join(re.findall(r"'([^']*)'", str(ctx.get("expected", "")))),
               known=", ".join(sorted(f.name for f in fields(GROUPS[key]))) if key in GROUPS else "")
    dotted = key + "".join(f"[{part}]" if isinstance(part, int) else f".{part}" for part in loc
                           if part not in _UNION_TAGS)
    allowed = _ALLOWED[first["type"]].format(**ctx) if first["type"] in _ALLOWED else first["msg"]
    return ParamError(dotted, value, allowed)


def validate(key: str, value: Any) -> Any:
    """The validated value of one top-level key or group of params.yaml (`value`: its raw YAML)."""
    if key not in ALL_KEYS:
        raise KeyError(f"no params key {key!r}")  # a programming error, not a user's
    try:
        if key in TOP_LEVEL:
            return _TOP_LEVEL[key].validate_python(value)
        if value is None and key in NULLABLE_GROUPS:
            return None
        if not isinstance(value, dict):
            raise ParamError(key, value, "a mapping of the group's keys (see params.yaml in the repository)")
        return GROUPS[key](**{str(name): item for name, item in value.items()})
    except ValidationError as error:
        raise _param_error(key, error) from None


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


def _check_folder(dataset: str | None, folder: FolderParams | None) -> None:
    if dataset != "folder":
        return
    if folder is None or folder.path is None:
        raise ParamError("folder.path", None, "the folder of your images with dataset folder "
                         "(-S folder.path=/abs/path; README, Data sets)")
    if not Path(folder.path).is_dir():
        raise ParamError("folder.path", folder.path, "an existing directory (absolute, or relative to the "
                         "repository root)")


def _looks(size: int, channels: int) -> str:
    return f"{size} x {size} {'grey' if channels == 1 else 'RGB'}"


def _refuse_image(image: ImageParams, expected: tuple[int, int], why: str) -> None:
    for key, value, allowed in (("channels", image.channels, expected[1]), ("size", image.size, expected[0])):
        if value != allowed:
            raise ParamError(f"image.{key}", value, f"{allowed}: {why}")


def _check_image(dataset: str | None, image: ImageParams) -> None:
    """A published data set's images are what they are."""
    if dataset in NATIVE_IMAGES:
        _refuse_image(image, NATIVE_IMAGES[dataset], f"dataset {dataset} has {_looks(*NATIVE_IMAGES[dataset])} "
                      "images (only dataset folder converts)")


def _check_final_exponent(tokenizer, image: ImageParams) -> None:
    final, levels = tokenizer.final_exponent, decomposition_levels(image.size)
    if isinstance(final, list) and len(final) != levels:
        raise ParamError("tokenizer.final_exponent", final, f"one integer, or a list of {levels}: "
                         f"{image.size} x {image.size} images have {levels} decomposition levels")


def load(path: str | Path = "params.yaml", keys: tuple[str, ...] = ()) -> Params:
    """Read params.yaml and validate the named top-level keys and groups (nothing else is read)."""
    raw = read_yaml(path)
    for key in raw:
        if key not in ALL_KEYS:  # a typo (here or in a conf/ profile) must not pass unnoticed
            raise ParamError(str(key), raw[key], "no such key; known keys: " + ", ".join(ALL_KEYS))
    values = {key: validate(key, raw.get(key)) for key in keys}
    if "folder" in values:
        _check_folder(values.get("dataset"), values["folder"])
    if "image" in values:
        _check_image(values.get("dataset"), values["image"])
    if "tokenizer" in values:
        _check_final_exponent(values["tokenizer"], values.get("image") or validate("image", raw.get("image")))
    return Params(values)
