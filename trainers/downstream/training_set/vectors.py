"""Embedding vectors between Arrow and NumPy, and the D of a view.

An offline row's ``embedding`` is ``fixed_size_list<float32>[D]`` or, where Spark wrote it,
``list<float>``, and null for a model switch's tombstone (DESIGN.md, "Work directory"). These
turn such a column into a dense [n, D] float32 matrix with zeros where there is no vector
(`embedding_matrix`: a whole column; `used_vectors`: only the rows some event sees), and tell
a view's D from its newest offline rows (`view_dim`). Errors: TrainingSetError naming the
column whose present vector is not of length D (`embedding_matrix`), or the view that has no
embeddings yet (`view_dim`).
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from derm_features.core.files import parquet_files
from derm_features.core.workdir import Workdir
from trainers.downstream.training_set.names import TrainingSetError, embedding_view


def embedding_matrix(
    values: pa.Array | pa.ChunkedArray, dim: int, column: str
) -> tuple[np.ndarray, np.ndarray]:
    """A (possibly null) list<float> column as ([n, dim] float32 with zeros, [n] bool present).

    Raises TrainingSetError naming `column` if a present vector is not of length `dim`.
    """
    if isinstance(values, pa.ChunkedArray):
        values = values.combine_chunks()
    present = values.is_valid().to_numpy(zero_copy_only=False)
    if pa.types.is_fixed_size_list(values.type) and values.type.list_size == dim:
        # every row owns `dim` slots (a null row's are unspecified): one reshape, no lengths
        flat = values.values.slice(values.offset * dim, len(values) * dim)
        if flat.null_count:  # the slots of null rows
            flat = pc.fill_null(flat, 0.0)
        out = flat.to_numpy(zero_copy_only=False).astype(np.float32).reshape(-1, dim)
        out[~present] = 0.0
        return out, present
    out = np.zeros((len(values), dim), dtype=np.float32)
    if present.any():
        kept = values.filter(pa.array(present))
        lengths = pc.list_value_length(kept).to_numpy(zero_copy_only=False)
        if (lengths != dim).any():
            bad = int(lengths[lengths != dim][0])
            raise TrainingSetError(
                f"column '{column}': an embedding has length {bad}, expected {dim} "
                "(every vector of a view must share the view's D)"
            )
        flat = pc.list_flatten(kept).to_numpy(zero_copy_only=False).astype(np.float32)
        out[present] = flat.reshape(-1, dim)
    return out, present


def vector_lengths(values: pa.Array | pa.ChunkedArray) -> np.ndarray:
    """[S] int64: the length of each vector of a list (or fixed-size list) column; -1 for a
    null one (a model switch's tombstone)."""
    return pc.list_value_length(values).fill_null(-1).to_numpy().astype(np.int64)


def chunk_matrix(chunk: pa.Array, dim: int) -> np.ndarray:
    """[n, D] float32 of one chunk of vectors: a view of the Arrow buffer when every row
    holds `dim` values; otherwise a copy whose null and other-length rows are zeros."""
    ok = vector_lengths(chunk) == dim
    if ok.all():  # flatten: the rows' values back to back, honouring the chunk's offset
        return chunk.flatten().to_numpy().reshape(-1, dim)
    matrix = np.zeros((len(chunk), dim), np.float32)
    if ok.any():
        kept = chunk.filter(pa.array(ok)).flatten()
        matrix[ok] = kept.to_numpy(zero_copy_only=False).reshape(-1, dim)
    return matrix


def used_vectors(values: pa.ChunkedArray, used: np.ndarray, dim: int) -> np.ndarray:
    """[U, D] float32: the vectors of rows `used` ([U] sorted row numbers of `values`),
    copied chunk by chunk: only the rows some event sees are kept, never the whole source
    (nor one concatenated copy of it)."""
    out = np.empty((len(used), dim), np.float32)
    start = 0
    for chunk in values.chunks:
        lo, hi = np.searchsorted(used, [start, start + len(chunk)])
        if hi > lo:
            rows = used[lo:hi] - start  # in range; "clip" as the default mode buffers `out`
            np.take(chunk_matrix(chunk, dim), rows, axis=0, out=out[lo:hi], mode="clip")
        start += len(chunk)
    return out


def view_dim(workdir: Workdir, key: str) -> int:
    """D of an embedding view: that of its newest offline rows (after a model switch with
    another D, events before the switch hold the old D and are refused by name)."""
    model, entity, view = embedding_view(key)
    source = workdir.offline(model, entity)
    files = parquet_files(source)[::-1] if source.is_dir() else []
    for file in files:
        column = pq.read_table(file, columns=["embedding"]).column("embedding")
        valid = column.drop_null()
        if len(valid):
            kind = valid.type
            if pa.types.is_fixed_size_list(kind):
                return kind.list_size
            return int(pc.list_value_length(valid.chunk(0)).to_numpy()[0])
    raise TrainingSetError(
        f"view '{view}' has no embeddings at {source}: run `derm materialize` for "
        f"--model {model} --entity {entity} first, or drop '{key}' from --embeddings"
    )
