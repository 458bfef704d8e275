"""Synthetic daily tower outputs in the DESIGN.md layout, for the materialization tests."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from derm_features.core.workdir import Workdir

DIM = 8
VERSION = "ctr-0a1b2c3d-d8@2024-01-01"


def unit_rows(rng: np.random.Generator, n: int, dim: int = DIM) -> np.ndarray:
    x = rng.standard_normal((n, dim)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def daily_table(
    ids,
    embeddings: np.ndarray,
    day: dt.date,
    seconds=None,
    version: str = VERSION,
    id_column: str = "user_id",
    fixed: bool = True,
) -> pa.Table:
    """Raw daily rows: `seconds` after midnight of `day` (default: 0, 1, 2, ...)."""
    n, dim = embeddings.shape
    seconds = np.arange(n) if seconds is None else np.asarray(seconds)
    start = np.datetime64(day.isoformat(), "us")
    flat = pa.array(np.ascontiguousarray(embeddings, np.float32).reshape(-1))
    emb = (
        pa.FixedSizeListArray.from_arrays(flat, dim)
        if fixed
        else pa.ListArray.from_arrays(pa.array(np.arange(n + 1, dtype=np.int32) * dim), flat)
    )
    return pa.table(
        {
            id_column: pa.array(np.asarray(ids, dtype=np.int64)),
            "ts": pa.array(start + seconds.astype("timedelta64[s]"), pa.timestamp("us", "UTC")),
            "embedding": emb,
            "model_version": pa.array([version] * n, pa.string()),
        }
    )


def write_daily(
    workdir: Workdir, model: str, entity: str, day: dt.date, table: pa.Table, name="part-0"
) -> Path:
    directory = workdir.daily(model, entity, day)
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"{name}.parquet"
    # As the infer step writes them: one row group per predict batch (4096 rows).
    pq.write_table(table, path, row_group_size=4096)
    return path


def flip_a_vector_byte(path: Path) -> None:
    """Flips one bit of the last vector's first float in a pool file, in place: the file
    keeps its size and still parses, so only its checksum can tell."""
    from materialize.storage import read_pool_file

    vectors = read_pool_file(path)["embedding"].combine_chunks().values.to_numpy()
    data = bytearray(path.read_bytes())
    at = data.rfind(vectors[-1].tobytes())
    assert at > 0, f"{path}: the last vector's bytes not found"
    data[at] ^= 0x40
    path.write_bytes(bytes(data))
    changed = read_pool_file(path)["embedding"].combine_chunks().values.to_numpy()
    assert changed[-1] != vectors[-1]


def tree_bytes(directory: Path) -> dict[str, bytes]:
    """Every file under `directory` (relative path -> bytes): two trees compare equal
    when they hold the same files with the same bytes."""
    return {
        str(p.relative_to(directory)): p.read_bytes()
        for p in sorted(directory.rglob("*"))
        if p.is_file()
    }
