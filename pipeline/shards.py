"""Token shards (spec section 9): Parquet files `data/tokens/<split>/part-NNNNN.parquet`, one row
per image, plus the sidecar `data/tokens/meta.json`."""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from .coder import Encoded

SEQUENCE_COLUMNS = ("tokens", "bp", "i1", "i2")
SCHEMA = pa.schema([
    ("index", pa.int32()),
    ("label", pa.int16()),
    ("initial_exponent", pa.int8()),
    *[(name, pa.list_(pa.uint8())) for name in SEQUENCE_COLUMNS],
])


@dataclass
class TokenSplit:
    """One split's sequences (flat, with offsets) and their per-image fields."""

    encoded: Encoded
    index: np.ndarray  # int32 row in the source split
    labels: np.ndarray  # int16

    def __len__(self) -> int:
        return len(self.labels)


def _list_column(values: np.ndarray, offsets: np.ndarray) -> pa.ListArray:
    return pa.ListArray.from_arrays(pa.array(offsets.astype(np.int32)), pa.array(values, type=pa.uint8()))


def write_shard(path: Path, encoded: Encoded, index: np.ndarray, labels: np.ndarray) -> None:
    """`encoded` holds exactly this shard's sequences."""
    offsets = encoded.offsets - encoded.offsets[0]
    table = pa.Table.from_arrays([
        pa.array(index.astype(np.int32)),
        pa.array(labels.astype(np.int16)),
        pa.array(encoded.initial_exponents.astype(np.int8)),
        *[_list_column(getattr(encoded, name), offsets) for name in SEQUENCE_COLUMNS],
    ], schema=SCHEMA)
    pq.write_table(table, path, compression="zstd")


def shard_paths(root: str | Path, split: str) -> list[Path]:
    paths = sorted(Path(root, split).glob("part-*.parquet"))
    if not paths:
        raise FileNotFoundError(f"no token shards in {Path(root, split)}; run `dvc repro tokenize`")
    return paths


def read_split(root: str | Path, split: str) -> TokenSplit:
    table = pa.concat_tables(pq.read_table(path, schema=SCHEMA) for path in shard_paths(root, split))
    table = table.combine_chunks()
    columns = {}
    for name in SEQUENCE_COLUMNS:
        chunk = table.column(name).chunk(0) if table.num_rows else pa.array([], pa.list_(pa.uint8()))
        columns[name] = chunk.flatten().to_numpy(zero_copy_only=False).astype(np.uint8)
        offsets = chunk.offsets.to_numpy().astype(np.int64) - int(chunk.offsets[0].as_py() or 0)
    encoded = Encoded(columns["tokens"], columns["bp"], columns["i1"], columns["i2"], offsets,
                      table.column("initial_exponent").to_numpy().astype(np.int8))
    return TokenSplit(encoded, table.column("index").to_numpy().astype(np.int32),
                      table.column("label").to_numpy().astype(np.int16))


def read_meta(root: str | Path) -> dict:
    return json.loads(Path(root, "meta.json").read_text())
