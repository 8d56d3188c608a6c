"""The files that pass between stages, written and read (and checked) here.

- DWT coefficients: `data/dwt/<split>_coeffs.npy` (N, M, M) float64 and `<split>_labels.npy`,
  for colour also `<split>_chroma.npy` (N, 2, M', M') (dwt -> tokenize).
- Token shards (spec section 9): `data/tokens/<split>/part-NNNNN.parquet`, one row per image
  (colour: with a `component` column, C8), and the sidecar `data/tokens/meta.json` (tokenize ->
  train, evaluate).
- Samples: `data/samples/samples.parquet`, one row per generated image (sample -> evaluate).
- A trained model in data/model: HuggingFace format (train -> sample, tune, complete); a diffusion
  model also has DIFFUSION_MARKER beside its config.

Readers check what the writer promised (schema, ranges, lengths, agreement with meta.json) and
raise InputError naming the file and the stage to rerun.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from .idx import DWT_IMAGE
from .io import InputError, load_labels, load_npy, read_json, require_keys
from .languages.base import from_description
from .languages.bpe import MAX_VOCAB
from .languages.encoded import Encoded

SEQUENCE_COLUMNS = ("tokens", "bp", "i1", "i2")
COLOUR_COLUMNS = (*SEQUENCE_COLUMNS, "component")  # colour shards (README, C8)


def sequence_columns(colour: bool) -> tuple[str, ...]:
    return COLOUR_COLUMNS if colour else SEQUENCE_COLUMNS


def read_dwt_image(root: str | Path) -> dict:
    """{height, width, classes} of the images the dwt stage transformed."""
    path = Path(root) / DWT_IMAGE
    image = read_json(path, "dwt")
    if not (isinstance(image.get("height"), int) and isinstance(image.get("width"), int)
            and isinstance(image.get("classes"), list) and image["classes"]):
        raise InputError(path, "lacks height, width or classes", "dwt")
    return image


def read_dwt(root: str | Path, split: str) -> tuple[np.ndarray, np.ndarray]:
    """Coefficients (N, M, M) float64 and labels (N,) int16 of one split (checked: InputError
    names a file that is not what this stage writes)."""
    root = Path(root)
    coeffs = load_npy(root / f"{split}_coeffs.npy", "dwt", mmap_mode="r")
    size = coeffs.shape[-1] if coeffs.ndim == 3 else 0
    if coeffs.ndim != 3 or coeffs.dtype != np.float64 or coeffs.shape[1] != size or size & (size - 1) \
            or size < 4 or not len(coeffs):
        raise InputError(root / f"{split}_coeffs.npy", f"holds {coeffs.dtype} of shape {coeffs.shape}, not "
                         "(N, M, M) float64 with M a power of two", "dwt")
    n_classes = len(read_dwt_image(root)["classes"])
    return coeffs, load_labels(root / f"{split}_labels.npy", len(coeffs), n_classes, "dwt")


def read_dwt_chroma(root: str | Path, split: str, images: int) -> np.ndarray:
    """The chroma coefficients (N, 2, M', M') float64 of a colour split's N images (checked)."""
    path = Path(root) / f"{split}_chroma.npy"
    chroma = load_npy(path, "dwt", mmap_mode="r")
    size = chroma.shape[-1] if chroma.ndim == 4 else 0
    if chroma.ndim != 4 or chroma.dtype != np.float64 or chroma.shape[:3] != (images, 2, size) \
            or size & (size - 1) or size < 4:
        raise InputError(path, f"holds {chroma.dtype} of shape {chroma.shape}, not ({images}, 2, M', M') float64 "
                         "with M' a power of two >= 4", "dwt")
    return chroma


def token_type(vocab_size: int) -> pa.DataType:
    """The contract's uint8 ids; a BPE vocabulary of more than 256 ids needs uint16."""
    return pa.uint8() if vocab_size <= 256 else pa.uint16()


def shard_schema(vocab_size: int, colour: bool = False) -> pa.Schema:
    return pa.schema([
        ("index", pa.int32()),
        ("label", pa.int16()),
        ("initial_exponent", pa.int8()),
        ("tokens", pa.list_(token_type(vocab_size))),
        *[(name, pa.list_(pa.uint8())) for name in sequence_columns(colour)[1:]],
    ])


def samples_schema(vocab_size: int) -> pa.Schema:
    return pa.schema([
        ("label", pa.int16()), ("initial_exponent", pa.int8()),
        ("tokens", pa.list_(token_type(vocab_size))), ("image", pa.list_(pa.uint8())),
    ])
DIFFUSION_MARKER = "diffusion.json"  # in data/model beside a diffusion model's config: what its sampler needs
META_KEYS = ("dataset", "language", "vocab_size", "n_classes", "max_length", "splits",
             "initial_exponent_counts")


@dataclass
class TokenSplit:
    """One split's sequences (flat, with offsets) and their per-image fields."""

    encoded: Encoded
    index: np.ndarray  # int32 row in the source split
    labels: np.ndarray  # int16

    def __len__(self) -> int:
        return len(self.labels)


# ----- token shards -----

def _list_column(values: np.ndarray, offsets: np.ndarray, value_type: pa.DataType = pa.uint8()) -> pa.ListArray:
    return pa.ListArray.from_arrays(pa.array(offsets.astype(np.int32)), pa.array(values, type=value_type))


def write_shard(path: Path, encoded: Encoded, index: np.ndarray, labels: np.ndarray, vocab_size: int,
                colour: bool = False) -> None:
    """`encoded` holds exactly this shard's sequences."""
    offsets = encoded.offsets - encoded.offsets[0]
    schema = shard_schema(vocab_size, colour)
    table = pa.Table.from_arrays([
        pa.array(index.astype(np.int32)),
        pa.array(labels.astype(np.int16)),
        pa.array(encoded.initial_exponents.astype(np.int8)),
        *[_list_column(getattr(encoded, name), offsets, schema.field(name).type.value_type)
          for name in sequence_columns(colour)],
    ], schema=schema)
    pq.write_table(table, path, compression="zstd")


def shard_paths(root: str | Path, split: str) -> list[Path]:
    paths = sorted(Path(root, split).glob("part-*.parquet"))
    if not paths:
        raise InputError(Path(root, split), "holds no token shards (part-*.parquet)", "tokenize")
    return paths


def _read_table(path: Path, schema: pa.Schema, producer: str, alternative: pa.Schema | None = None) -> pa.Table:
    try:
        table = pq.read_table(path)
    except (OSError, pa.ArrowException) as error:
        raise InputError(path, f"is not a readable Parquet file ({error})", producer) from None
    if alternative is not None and table.schema.equals(alternative, check_metadata=False):
        return table.combine_chunks()
    if not table.schema.equals(schema, check_metadata=False):
        got = {field.name: str(field.type) for field in table.schema}
        wrong = [f"{field.name} ({got.get(field.name, 'missing')}, expected {field.type})"
                 for field in schema if got.get(field.name) != str(field.type)]
        raise InputError(path, "does not have the expected columns: " + ", ".join(wrong or ["extra columns"]),
                         producer)
    return table.combine_chunks()


def _flat(table: pa.Table, name: str) -> tuple[np.ndarray, np.ndarray]:
    """A list<uint8> (or list<uint16>) column -> (flat values, offsets from 0)."""
    column = table.column(name)
    chunk = column.chunk(0) if column.num_chunks else pa.array([], column.type)
    offsets = chunk.offsets.to_numpy().astype(np.int64)
    values = chunk.flatten().to_numpy(zero_copy_only=False).astype(column.type.value_type.to_pandas_dtype())
    return values, offsets - offsets[0]


def _check_shard(path: Path, table: pa.Table, language, n_classes: int, check_grammar: bool) -> TokenSplit:
    """One shard's rows against the data contract and the language (ranges; with check_grammar,
    the grammar too)."""
    def bad(problem: str):
        return InputError(path, problem, "tokenize")

    columns = {"component": None}
    offsets = None
    for name in sequence_columns(language.colour):
        columns[name], these = _flat(table, name)
        if offsets is not None and not np.array_equal(these, offsets):
            row = int(np.flatnonzero(np.diff(these) != np.diff(offsets))[0])
            raise bad(f"row {row}: column {name} has {these[row + 1] - these[row]} entries, tokens has "
                      f"{offsets[row + 1] - offsets[row]}")
        offsets = these
    labels = table.column("label").to_numpy().astype(np.int16)
    e0 = table.column("initial_exponent").to_numpy().astype(np.int64)
    for name, values, limit in (("label", labels, n_classes), ("tokens", columns["tokens"], language.vocab_size),
                                ("i1", columns["i1"], language.size), ("i2", columns["i2"], language.size),
                                ("bp", columns["bp"], language.max_planes),
                                ("component", columns["component"], 3)):
        if values is None:
            continue
        if values.size and (values.min() < 0 or values.max() >= limit):
            where = int(np.flatnonzero((values < 0) | (values >= limit))[0])
            row = where if name == "label" else int(np.searchsorted(offsets, where, side="right") - 1)
            raise bad(f"row {row}: {name} {values[where]} is outside 0..{limit - 1}")
    lo, hi = language.e0_range
    if e0.size and (e0.min() < lo or e0.max() > hi):
        row = int(np.flatnonzero((e0 < lo) | (e0 > hi))[0])
        raise bad(f"row {row}: initial_exponent {e0[row]} is outside {lo}..{hi}, what this language "
                  f"({language.describe()}) allows")
    encoded = Encoded(columns["tokens"], columns["bp"], columns["i1"], columns["i2"], offsets, e0.astype(np.int8),
                      columns["component"])
    if check_grammar:
        try:
            language.check(encoded)
        except ValueError as error:
            raise bad(f"row {str(error).removeprefix('sequence ')}") from None
    return TokenSplit(encoded, table.column("index").to_numpy().astype(np.int32), labels)


def read_split(root: str | Path, split: str, meta: dict | None = None, check_grammar: bool = False) -> TokenSplit:
    """A split's sequences from its shards, checked against meta.json and the language; with
    `check_grammar`, also against its grammar."""
    meta = meta or read_meta(root)
    language = from_description(meta["language"])
    schema = shard_schema(meta["vocab_size"], language.colour)
    parts = [_check_shard(path, _read_table(path, schema, "tokenize"), language,
                          meta["n_classes"], check_grammar)
             for path in shard_paths(root, split)]
    encoded = concatenate([part.encoded for part in parts])
    promised = meta["splits"].get(split, {})
    if promised.get("images") != len(encoded) or promised.get("tokens") != int(encoded.offsets[-1]):
        raise InputError(Path(root, split), f"holds {len(encoded)} sequences and {encoded.offsets[-1]} tokens; "
                         f"meta.json promises {promised.get('images')} and {promised.get('tokens')}", "tokenize")
    return TokenSplit(encoded, np.concatenate([part.index for part in parts]),
                      np.concatenate([part.labels for part in parts]))


def concatenate(parts: list[Encoded]) -> Encoded:
    """Several batches of sequences -> one (offsets shifted)."""
    lengths = np.concatenate([part.lengths for part in parts])
    return Encoded(*(np.concatenate([getattr(part, name) for part in parts]) for name in SEQUENCE_COLUMNS),
                   np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64),
                   np.concatenate([part.initial_exponents for part in parts]),
                   np.concatenate([part.component for part in parts]))


def read_meta(root: str | Path) -> dict:
    path = Path(root, "meta.json")
    meta = read_json(path, "tokenize")
    require_keys(meta, META_KEYS, path, "tokenize")
    try:
        from_description(meta["language"])
    except (TypeError, ValueError) as error:
        raise InputError(path, f"describes no known language ({error})", "tokenize") from None
    return meta


# ----- samples -----

def write_samples(path: Path, labels: np.ndarray, encoded: Encoded, images: np.ndarray, vocab_size: int) -> None:
    flat_images = images.reshape(len(images), -1)
    image_offsets = np.arange(len(images) + 1, dtype=np.int32) * flat_images.shape[1]
    table = pa.Table.from_arrays([
        pa.array(labels.astype(np.int16)), pa.array(encoded.initial_exponents.astype(np.int8)),
        _list_column(encoded.tokens, encoded.offsets - encoded.offsets[0], token_type(vocab_size)),
        pa.ListArray.from_arrays(pa.array(image_offsets), pa.array(flat_images.reshape(-1), pa.uint8())),
    ], schema=samples_schema(vocab_size))
    pq.write_table(table, path, compression="zstd")


@dataclass
class Samples:
    labels: np.ndarray  # int16
    initial_exponents: np.ndarray  # int8
    tokens: np.ndarray  # flat ids (uint8; uint16 for a BPE vocabulary of more than 256)
    offsets: np.ndarray  # int64, N + 1
    images: np.ndarray  # (N, H, W) uint8, or (N, H, W, 3) RGB


def read_samples(path: str | Path, height: int, width: int, channels: int) -> Samples:
    """A samples.parquet, checked: every image has height x width pixels of `channels` (1 grey,
    3 RGB) values."""
    path = Path(path)
    table = _read_table(path, samples_schema(256), "sample", alternative=samples_schema(MAX_VOCAB))
    pixels, image_offsets = _flat(table, "image")
    sizes = np.diff(image_offsets)
    if (sizes != height * width * channels).any():
        row = int(np.flatnonzero(sizes != height * width * channels)[0])
        raise InputError(path, f"row {row}: image has {sizes[row]} values, expected {height} x {width}"
                         + (f" x {channels}" if channels > 1 else ""), "sample")
    tokens, offsets = _flat(table, "tokens")
    labels = table.column("label").to_numpy().astype(np.int16)
    if labels.size and labels.min() < 0:
        raise InputError(path, f"holds a negative label ({labels.min()})", "sample")
    return Samples(labels, table.column("initial_exponent").to_numpy().astype(np.int8), tokens, offsets,
                   pixels.reshape(len(labels), height, width, *[channels] * (channels > 1)))
