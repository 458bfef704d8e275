"""The one aggregation kernel (paper appendix C): dedup -> merge -> carry-over -> TTL.

`merge_day(pool, daily, params)` takes the pool of day t-1 and the raw tower outputs of
day t (both Arrow tables, for any subset of entities: one hash bucket, one Spark group, or
everything) and returns an *annotated* table: one row per entity of either input with its
value on day t and a `status` (new, updated, carried, expired). Every engine calls it and
derives the pool, the changed rows and the health metrics from that one table
(`split_annotated`), so the aggregation logic exists exactly once.

Rules, in order:

- Dedup (C.1): the last daily row of an entity by `ts`. Ties (same entity, same `ts`) go to
  the row whose embedding has the largest 64-bit hash of its float32 bits (`_embedding_hash`),
  which depends only on the values, never on file or partition order, so every engine
  picks the same row. Rows with identical embeddings are interchangeable anyway.
- Merge (C.2): `acc` keeps the day's embedding; `ma` gives ``w * E(t-1) + (1 - w) * E_daily``;
  `ap` averages the two latest daily embeddings (today's and the pool's `prev_daily`).
  An entity seen for the first time takes its daily embedding under every heuristic.
- The pool keeps the paper's aggregate exactly: E(t) = `aggregate_scale` * `embedding`,
  and day t+1 merges E(t), never a re-normalised value, so many days of `ma` follow the
  paper's recursion (to float32 rounding). `embedding` is the *published* value (offline
  rows, Redis, the Pin index all read it).
- Re-normalisation (`renormalize`, default on): the published value is E(t) / |E(t)|
  (`aggregate_scale` = |E(t)|). Tower outputs are unit vectors (paper A.1) and consumers
  take inner products or build an ANN index over them; an average of unit vectors is
  shorter the more they disagree, so without it an entity's norm would drift with its
  instability rather than its affinity. Off: the published value is E(t) itself
  (`aggregate_scale` = 1), the paper's plain weighted sum.
- Degenerate merges: where E(t) is not finite or its norm is at most `DEGENERATE_RATIO`
  of the norms that went into it (`ma` w=0.5 over e then -e, `ap` over e and -e: the sum
  cancels and its direction is rounding noise), nothing new is published: the entity keeps
  its previous published value (or, if that is itself zero, as in pools written before
  this rule, today's daily embedding), `aggregate_scale` still records |E(t)|, and the
  row is flagged `degenerate` (counted in the health table). Norms are taken in float64
  where float32 would overflow or underflow (`row_norms`), so x1e30 inputs merge fine.
- Carry-over: an entity with no daily row keeps its value, `aggregate_scale`,
  `prev_daily` and `last_seen`.
- `prev_daily` is kept under `ap` only and is null under `acc` and `ma` (it would double
  the vectors a pool carries). An entity whose pool row has no `prev_daily` (a pool built
  with another heuristic) takes its daily embedding under `ap`, like a new entity.
- TTL: a carried entity whose `last_seen` is more than `ttl_days` days before t is
  expired (dropped); exactly `ttl_days` old is kept.
- Pools written before `aggregate_scale` existed read as scale 1: their stored
  (re-normalised) value is taken as E(t-1) once, and the recursion is exact from then on.
"""

from __future__ import annotations

import datetime as dt
import os
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import TypeVar

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from derm_features.core.arrays import fixed_size_list
from derm_features.core.spec import HEURISTICS

T = TypeVar("T")

# Status codes of the annotated table.
CARRIED, UPDATED, NEW, EXPIRED = 0, 1, 2, 3

_MICROS_PER_DAY = 86_400_000_000
TIMESTAMP = pa.timestamp("us", tz="UTC")
# `prev_daily` is only needed by `ap` and is null otherwise, so it is a variable-size list:
# a null list row costs an offset, a null fixed-size list row would cost D floats.
PREV_DAILY_TYPE = pa.list_(pa.float32())
# A merged value whose norm is at most this share of the norms that went into it has
# cancelled: float32 inputs carry ~6e-8 relative rounding, so its direction is noise.
DEGENERATE_RATIO = 1e-6


@dataclass(frozen=True)
class KernelParams:
    """What one day's merge needs besides its two tables."""

    day: dt.date
    id_column: str
    heuristic: str = "ma"
    w: float = 0.8
    ttl_days: int = 90
    renormalize: bool = True

    def __post_init__(self) -> None:
        if self.heuristic not in HEURISTICS:
            raise ValueError(f"heuristic must be one of {HEURISTICS}, got '{self.heuristic}'")
        if not 0.0 <= self.w <= 1.0:
            raise ValueError(f"w must be in [0, 1], got {self.w}")
        if self.ttl_days < 0:
            raise ValueError(f"ttl_days must be >= 0, got {self.ttl_days}")


def day_start(day: dt.date) -> dt.datetime:
    """00:00:00 UTC of `day`, the `last_seen` stamp of an entity seen that day."""
    return dt.datetime(day.year, day.month, day.day, tzinfo=dt.UTC)


def pool_schema(id_type: pa.DataType, dim: int) -> pa.Schema:
    """The pool's columns (DESIGN.md); embeddings are fixed-size lists where we write them.

    `embedding` is the published value, `aggregate_scale` (float64) the factor that makes
    it the paper's aggregate: E(t) = aggregate_scale * embedding.
    """
    vector = pa.list_(pa.float32(), dim)
    return pa.schema(
        [
            ("__id__", id_type),
            ("embedding", vector),
            ("aggregate_scale", pa.float64()),
            ("last_seen", TIMESTAMP),
            ("prev_daily", PREV_DAILY_TYPE),
            ("model_version", pa.string()),
        ]
    )


def annotated_schema(id_column: str, id_type: pa.DataType, dim: int) -> pa.Schema:
    """`merge_day`'s output: the pool columns plus status, day-to-day cosine, the norm of
    E(t) (float64: it may exceed float32's range) and the `degenerate` flag."""
    fields = list(pool_schema(id_type, dim))
    fields[0] = pa.field(id_column, id_type)
    return pa.schema(
        [
            *fields,
            ("status", pa.int8()),
            ("cosine", pa.float32()),
            ("norm", pa.float64()),
            ("degenerate", pa.bool_()),
        ]
    )


def empty_pool(id_column: str, id_type: pa.DataType, dim: int) -> pa.Table:
    return pool_schema(id_type, dim).set(0, pa.field(id_column, id_type)).empty_table()


def embedding_matrix(column: pa.Array | pa.ChunkedArray, dim: int) -> np.ndarray:
    """An (n, dim) float32 view of a list<float32> or fixed_size_list<float32>[dim] column.

    Lengths are checked by the readers (`storage`); a list column that is not a dense
    n * dim block is rejected here rather than silently misread.
    """
    if isinstance(column, pa.ChunkedArray):
        if column.num_chunks != 1:
            # One NumPy copy: Arrow's combine_chunks of sliced list arrays is ~20x slower.
            parts = [embedding_matrix(chunk, dim) for chunk in column.chunks]
            return np.concatenate(parts) if parts else np.empty((0, dim), dtype=np.float32)
        column = column.chunk(0)
    n = len(column)
    if n == 0:
        return np.empty((0, dim), dtype=np.float32)
    if pa.types.is_fixed_size_list(column.type):
        values = column.flatten()
    else:
        offsets = column.offsets.to_numpy()
        if offsets[-1] - offsets[0] != n * dim or not np.all(np.diff(offsets) == dim):
            raise ValueError(f"embedding column is not {n} rows of length {dim}")
        values = column.flatten()
    return values.to_numpy(zero_copy_only=False).astype(np.float32, copy=False).reshape(n, dim)


def _embedding_hash(matrix: np.ndarray) -> np.ndarray:
    """A 64-bit FNV-1a-style hash of each row's float32 bits (the dedup tie-breaker)."""
    bits = matrix.view(np.uint32).astype(np.uint64)
    h = np.full(len(matrix), 0xCBF29CE484222325, dtype=np.uint64)
    prime = np.uint64(0x100000001B3)
    for j in range(bits.shape[1]):  # over dimensions, vectorised over rows
        h = (h ^ bits[:, j]) * prime
    return h


def last_of_day_rows(daily: pa.Table, id_column: str, dim: int) -> np.ndarray:
    """Row numbers of each entity's last daily row by `ts`, ties broken by
    `_embedding_hash` (largest wins); sorted by entity id."""
    if daily.num_rows == 0:
        return np.zeros(0, dtype=np.int64)
    order = pc.sort_indices(daily, [(id_column, "ascending"), ("ts", "ascending")])
    ids = daily[id_column].take(order)
    ts = pc.cast(daily["ts"].take(order), TIMESTAMP).to_numpy().view(np.int64)
    new_group = np.ones(len(ts), dtype=bool)
    new_group[1:] = pc.not_equal(ids[1:], ids[:-1]).to_numpy(zero_copy_only=False)
    order = order.to_numpy()
    same_ts_as_next = np.zeros(len(ts), dtype=bool)
    same_ts_as_next[:-1] = ~new_group[1:] & (ts[1:] == ts[:-1])
    if same_ts_as_next.any():
        # Only tied rows are hashed; the rest keep key 0 and their (id, ts) order.
        tied = same_ts_as_next.copy()
        tied[1:] |= same_ts_as_next[:-1]
        key = np.zeros(len(ts), dtype=np.uint64)
        key[tied] = _embedding_hash(embedding_matrix(daily["embedding"], dim)[order[tied]])
        resort = np.lexsort((key, ts, np.cumsum(new_group)))
        order = order[resort]
    last = np.ones(len(ts), dtype=bool)
    last[:-1] = new_group[1:]
    return order[last]


def dedup_last_of_day(daily: pa.Table, id_column: str, dim: int) -> pa.Table:
    """One row per entity: the last by `ts` (see `last_of_day_rows`)."""
    return daily.take(pa.array(last_of_day_rows(daily, id_column, dim)))


# Squared float32 norms inside this range are exact to float32 rounding; outside it
# float32 squares overflow (|x| above ~1e19) or underflow (below ~1e-19) and are redone
# in float64. 256-d float32 rows square-sum to at most 2.9e79, well inside float64.
_SAFE_SQUARES = (1e-30, 1e30)


def _row_dots(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Row-wise a . b of two (n, D) float32 matrices, as float64 (n,).

    One float32 pass (the hot path); rows whose float32 result is outside `_SAFE_SQUARES`
    in magnitude (or not finite) are recomputed in float64, so x1e30 vectors or tiny ones
    get their true value instead of inf or 0.
    """
    dots = np.einsum("ij,ij->i", a, b).astype(np.float64)
    magnitude = np.abs(dots)
    redo = ~((magnitude > _SAFE_SQUARES[0]) & (magnitude < _SAFE_SQUARES[1]))
    if redo.any():
        dots[redo] = np.einsum("ij,ij->i", a[redo].astype(np.float64), b[redo].astype(np.float64))
    return dots


def row_norms(matrix: np.ndarray) -> np.ndarray:
    """L2 norm of each row of an (n, D) float32 matrix, float64 (n,), never overflowing
    for finite input (see `_row_dots`); NaN or inf where a row holds one."""
    return np.sqrt(_row_dots(matrix, matrix))


def _row_cosine(a: np.ndarray, b: np.ndarray, a_norms: np.ndarray, b_norms: np.ndarray):
    """Row-wise cosine of two (n, D) float32 matrices given their norms; 0 where a norm is 0."""
    denom = a_norms * b_norms
    dot = _row_dots(a, b)
    return np.divide(dot, denom, out=np.zeros_like(dot), where=denom > 0).astype(np.float32)


def _positions(pool_ids: pa.Array, seen_ids: pa.Array) -> np.ndarray:
    """Row of each seen id in the pool, -1 where absent. Integer ids: one sort of the pool
    ids and a binary search (several times faster than hashing with Arrow's index_in)."""
    if len(pool_ids) == 0:
        return np.full(len(seen_ids), -1, dtype=np.int64)
    if not pa.types.is_integer(pool_ids.type):
        return pc.fill_null(pc.index_in(seen_ids, value_set=pool_ids), -1).to_numpy()
    pool = pool_ids.to_numpy()
    seen = seen_ids.to_numpy()
    order = None if np.all(pool[1:] > pool[:-1]) else np.argsort(pool, kind="stable")
    ordered = pool if order is None else pool[order]
    at = np.minimum(np.searchsorted(ordered, seen), len(ordered) - 1)
    found = ordered[at] == seen
    rows = at if order is None else order[at]
    return np.where(found, rows, -1)


def _matrix_and_valid(column: pa.ChunkedArray, dim: int) -> tuple[np.ndarray, np.ndarray]:
    """(n, dim) float32 values and a validity mask of a vector column with null rows (zero)."""
    column = column.combine_chunks() if column.num_chunks != 1 else column.chunk(0)
    valid = column.is_valid().to_numpy(zero_copy_only=False)
    if column.null_count == 0:
        return embedding_matrix(column, dim), valid
    matrix = np.zeros((len(column), dim), dtype=np.float32)
    flat = column.flatten().to_numpy(zero_copy_only=False).astype(np.float32, copy=False)
    matrix[valid] = flat.reshape(-1, dim)
    return matrix, valid


def aggregate_scales(pool: pa.Table) -> np.ndarray:
    """[n] float64: E(t) = scale * embedding for each pool row. A pool written before the
    column existed (or a null) reads as 1: its stored value is taken as the aggregate."""
    if "aggregate_scale" not in pool.column_names:
        return np.ones(pool.num_rows, dtype=np.float64)
    column = pc.fill_null(pc.cast(pool["aggregate_scale"], pa.float64()), 1.0)
    return column.to_numpy()


def _list_vectors(matrix: np.ndarray, valid: np.ndarray) -> pa.ListArray:
    """An (n, dim) matrix as list<float32> with null rows where not `valid` (no copy)."""
    n, dim = matrix.shape
    if n * dim >= 2**31:
        raise ValueError(f"{n} x {dim} values overflow a list column; use more buckets")
    offsets = pa.array(np.arange(n + 1, dtype=np.int32) * dim)
    values = pa.array(np.ascontiguousarray(matrix, dtype=np.float32).reshape(-1))
    return pa.ListArray.from_arrays(offsets, values, mask=pa.array(~valid))


# Rows per block of `_merge_vectors`: a block of each operand (256-d: 1 MiB) stays in cache
# while it is combined, normalised and measured, so each vector crosses memory once.
_BLOCK_ROWS = 1024


def default_threads() -> int:
    """Threads for the kernel's vector pass: the usable cores, at most 8 (the pass is
    memory-bound; more threads stop paying)."""
    return max(1, min(8, len(os.sched_getaffinity(0))))


@dataclass(frozen=True)
class _Vectors:
    embedding: np.ndarray  # [n_seen + len(rest), D] float32: published rows, then the rest
    scale: np.ndarray  # [n_seen + len(rest)] float64: E = scale * embedding
    norm: np.ndarray  # [n_seen] float64: |E(t)| of each of the day's rows
    degenerate: np.ndarray  # [n_seen] bool: E(t) cancelled or not finite; nothing new published
    cosine: np.ndarray  # [n_updated]: cosine of each updated row's published values t-1, t
    prev_daily: np.ndarray | None  # `ap` only: [n_out, D] the daily embeddings to keep


def _divide_rows(out: np.ndarray, divisors: np.ndarray) -> None:
    """out[k] /= divisors[k] in place (out [n, D] float32, divisors [n] float64, > 0).
    A norm beyond float32's range (components near its maximum) divides in float64: as a
    float32 divisor it would be inf and publish a zero row."""
    huge = divisors > _SAFE_SQUARES[1]
    out /= np.where(huge, 1.0, divisors).astype(np.float32)[:, None]
    if huge.any():
        out[huge] = (out[huge].astype(np.float64) / divisors[huge][:, None]).astype(np.float32)


def _fall_back(
    out: np.ndarray,
    bad: np.ndarray,
    norm: np.ndarray,
    scale: np.ndarray,
    published: np.ndarray,
    prev: np.ndarray,
    prev_norm: np.ndarray,
    daily: np.ndarray,
) -> None:
    """Degenerate rows of a block publish a value they already had (module docstring).

    out [n, D] float32: the block's published values; bad [n]: degenerate rows; norm [n]
    float64: |E(t)|; scale, published [n] float64: each row's `aggregate_scale` and
    published norm (all four updated in place for the bad rows). The first len(prev) rows
    are updated entities whose published value of day t-1 is `prev` (norms `prev_norm`);
    daily [n_bad, D]: the bad rows' daily embeddings (validated: finite, non-zero).
    A bad updated row keeps `prev` if it is finite and non-zero, any other takes its
    daily embedding. Its scale is |E(t)| / |published|, so the pool still holds E(t)'s
    norm (a cancelled sum's direction is noise anyway); where E(t) is not finite (only
    a corrupt pool can cause that) the state restarts from the published value (scale 1).
    """
    rows = np.flatnonzero(bad)
    replacement = daily
    updated = rows[rows < len(prev)]
    keep = updated[np.isfinite(prev_norm[updated]) & (prev_norm[updated] > 0)]
    replacement[np.isin(rows, keep)] = prev[keep]
    out[rows] = replacement
    published[rows] = row_norms(replacement)
    finite = np.isfinite(norm[rows])
    scale[rows] = np.where(finite, norm[rows] / published[rows], 1.0)


def _merge_vectors(
    daily_emb: np.ndarray,
    rows: np.ndarray,
    pool_emb: np.ndarray,
    pool_scale: np.ndarray,
    at: np.ndarray,
    rest: np.ndarray,
    pool_prev: np.ndarray | None,
    pool_prev_valid: np.ndarray | None,
    params: KernelParams,
    threads: int | None,
    meanwhile: Callable[[], T],
) -> tuple[_Vectors, T]:
    """The day's vectors in one pass over memory, and `meanwhile()`'s result, computed on
    the calling thread while the worker threads run.

    daily_emb [n_daily, D], rows [n_seen]: the day's row of each entity seen today,
    updated ones first; pool_emb [n_pool, D] (published values), pool_scale [n_pool]
    (E(t-1) = pool_scale * pool_emb), at [n_updated]: the pool row of each updated
    entity; rest: pool rows carried (or expired), copied after the day's rows.
    Each thread takes a contiguous share of the day's rows and of the rest and works
    through it in `_BLOCK_ROWS` blocks; NumPy releases the GIL in every call used here.
    Arithmetic is float32 (E's components never exceed its inputs' in magnitude, so no
    overflow), norms float64 (`row_norms`). Paper C.2; rules in the module docstring.
    `np.take(..., mode="clip")`: the default mode buffers `out`; indices are in range.
    """
    dim = pool_emb.shape[1]
    n_seen, n_updated = len(rows), len(at)
    n_out = n_seen + len(rest)
    embedding = np.empty((n_out, dim), dtype=np.float32)
    scale = np.empty(n_out, dtype=np.float64)
    norm = np.empty(n_seen, dtype=np.float64)
    degenerate = np.zeros(n_seen, dtype=bool)
    cosine = np.empty(n_updated, dtype=np.float32)
    ap = params.heuristic == "ap"
    w = np.float32(params.w)  # float32 arithmetic: |E|'s components never exceed its inputs'
    prev_daily = np.empty((n_out, dim), dtype=np.float32) if ap else None

    def merge_seen(begin: int, end: int) -> None:
        previous = np.empty((_BLOCK_ROWS, dim), dtype=np.float32)
        scratch = np.empty((_BLOCK_ROWS, dim), dtype=np.float32)
        for i in range(begin, end, _BLOCK_ROWS):
            j = min(i + _BLOCK_ROWS, end)
            out = embedding[i:j]
            np.take(daily_emb, rows[i:j], axis=0, out=out, mode="clip")
            if ap:
                prev_daily[i:j] = out  # today's daily embeddings, before merging
            u = max(0, min(j, n_updated) - i)  # the block's updated rows come first
            prev = previous[:u]  # their published values of day t-1
            np.take(pool_emb, at[i : i + u], axis=0, out=prev, mode="clip")
            prev_norm = row_norms(prev)
            inputs = _merge_updated(out[:u], prev, prev_norm, at[i : i + u], scratch[:u])
            lengths = row_norms(out)  # |E(t)|, float64
            norm[i:j] = lengths
            # Cancelled (at most DEGENERATE_RATIO of its inputs) or not finite. A row that
            # is today's daily embedding (new, `acc`) only fails this when it is zero.
            bad = ~(lengths > 0)
            bad[:u] = ~(lengths[:u] > DEGENERATE_RATIO * inputs)
            degenerate[i:j] = bad
            if params.renormalize:
                _divide_rows(out, np.where(bad, 1.0, lengths))
                block_scale, published = lengths.copy(), np.ones(j - i)
            else:
                block_scale, published = np.ones(j - i), lengths.copy()
            if bad.any():
                _fall_back(out, bad, lengths, block_scale, published, prev, prev_norm,
                           daily_emb[rows[i:j][bad]])  # fmt: skip
            scale[i:j] = block_scale
            if u:
                cosine[i : i + u] = _row_cosine(prev, out[:u], prev_norm, published[:u])

    def _merge_updated(merged, prev, prev_norm, at_rows, scratch) -> np.ndarray:
        """E(t) of updated rows in place of their daily values (`merged`, [u, D]); returns
        the norms [u] float64 of what went into each (for the cancellation test)."""
        inputs = row_norms(merged)
        if params.heuristic == "ma":
            # E(t-1) = scale * published(t-1): the exact aggregate, not the unit value.
            past = np.abs(pool_scale[at_rows])
            inputs = params.w * past * prev_norm + (1 - params.w) * inputs
            merged *= np.float32(1.0) - w
            merged += np.multiply(prev, (w * past).astype(np.float32)[:, None], out=scratch)
        elif ap:
            # A pool written without `ap` holds no previous daily: take today's.
            both = np.flatnonzero(pool_prev_valid[at_rows])
            older = pool_prev[at_rows[both]]
            inputs[both] = 0.5 * (row_norms(older) + inputs[both])
            # 0.5a + 0.5b (exact halvings), not 0.5(a + b): a + b can overflow float32.
            merged[both] = np.float32(0.5) * older + np.float32(0.5) * merged[both]
        return inputs

    def copy_rest(begin: int, end: int) -> None:
        for i in range(begin, end, _BLOCK_ROWS):
            j = min(i + _BLOCK_ROWS, end)
            np.take(
                pool_emb, rest[i:j], axis=0, out=embedding[n_seen + i : n_seen + j], mode="clip"
            )
            scale[n_seen + i : n_seen + j] = pool_scale[rest[i:j]]
            if ap:
                np.take(
                    pool_prev,
                    rest[i:j],
                    axis=0,
                    out=prev_daily[n_seen + i : n_seen + j],
                    mode="clip",
                )

    threads = threads or default_threads()
    tasks = [
        (fn, *share)
        for fn, n in ((merge_seen, n_seen), (copy_rest, len(rest)))
        for share in _shares(n, threads)
    ]
    if threads == 1 or len(tasks) <= 1:
        for fn, begin, end in tasks:
            fn(begin, end)
        other = meanwhile()
    else:
        with ThreadPoolExecutor(threads) as executor:
            futures = [executor.submit(*task) for task in tasks]
            other = meanwhile()  # the scalar columns, while the workers move vectors
            for future in futures:
                future.result()
    return _Vectors(embedding, scale, norm, degenerate, cosine, prev_daily), other


def _shares(n: int, parts: int) -> list[tuple[int, int]]:
    """`parts` contiguous [begin, end) ranges covering range(n), block-aligned, none empty."""
    blocks = -(-n // _BLOCK_ROWS)
    edges = [min(n, round(blocks * k / parts) * _BLOCK_ROWS) for k in range(parts + 1)]
    return [(a, b) for a, b in zip(edges, edges[1:], strict=False) if b > a]


def merge_day(
    pool: pa.Table, daily: pa.Table, params: KernelParams, dim: int, threads: int | None = None
) -> pa.Table:
    """Day t's annotated table from pool(t-1) and the raw daily rows of day t.

    pool:  `<id>`, `embedding`, `aggregate_scale`, `last_seen`, `prev_daily`,
           `model_version` (pool(t-1) rows; `aggregate_scale` absent or null reads as 1)
    daily: `<id>`, `ts`, `embedding`, `model_version` (raw; several rows per entity allowed)
    Returns `annotated_schema` in four blocks: updated and new entities (each sorted by
    id), then carried and expired ones (each in pool order). The output is a function of
    the inputs only.

    Cost: every vector is written once, straight into its block of one output matrix
    (`_merge_vectors`: cache-sized row blocks on `threads` threads, default
    `default_threads()`; the Spark engine passes 1, its tasks already fill the cores).
    `cosine` (of the published values of t-1 and t) is set for updated rows, `norm` and
    `degenerate` for the day's rows (null otherwise). `norm` is |E(t)|, the paper's
    aggregate before re-normalisation: near 1 for a tower output, lower the more
    `ma`/`ap` averaged vectors that disagree.
    """
    key = params.id_column
    id_type = pool.schema.field(key).type if pool.num_rows else daily.schema.field(key).type
    stamp = pa.scalar(day_start(params.day), type=TIMESTAMP).value

    rows = last_of_day_rows(daily, key, dim)
    pool_ids = pool[key].combine_chunks()
    pos = _positions(pool_ids, daily[key].combine_chunks().take(pa.array(rows)))
    # Today's entities, updated ones first (so each group is a slice), each sorted by id.
    updated_first = np.concatenate([np.flatnonzero(pos >= 0), np.flatnonzero(pos < 0)])
    rows, pos = rows[updated_first], pos[updated_first]
    take = pa.array(rows)
    n_pool, n_seen = pool.num_rows, len(rows)
    n_updated = int(np.count_nonzero(pos >= 0))
    at = pos[:n_updated]  # pool rows updated today

    # Pool rows without a row today are carried, or expired past the TTL.
    untouched = np.ones(n_pool, dtype=bool)
    untouched[at] = False
    last_seen = pc.cast(pool["last_seen"], TIMESTAMP).to_numpy().view(np.int64)
    # More than ttl_days whole days old: (stamp - last_seen) // day > ttl_days.
    is_expired = untouched & (stamp - last_seen >= (params.ttl_days + 1) * _MICROS_PER_DAY)
    carried = np.flatnonzero(untouched & ~is_expired)
    expired = np.flatnonzero(is_expired)
    rest = np.concatenate([carried, expired])  # pool rows after the day's rows
    n_out = n_seen + len(rest)

    daily_emb = embedding_matrix(daily["embedding"], dim)
    pool_emb = embedding_matrix(pool["embedding"], dim)
    pool_scale = aggregate_scales(pool)
    if params.heuristic == "ap":
        pool_prev, pool_prev_valid = _matrix_and_valid(pool["prev_daily"], dim)
    else:
        pool_prev = pool_prev_valid = None

    def other_columns() -> dict[str, pa.Array]:
        """Everything but the vectors (run while the vector pass runs)."""
        rest_rows = pa.array(rest)
        status = np.full(n_out, CARRIED, dtype=np.int8)
        status[:n_updated] = UPDATED
        status[n_updated:n_seen] = NEW
        status[n_seen + len(carried) :] = EXPIRED
        versions = [daily["model_version"].combine_chunks().take(take)]
        versions.append(pool["model_version"].combine_chunks().take(rest_rows))
        return {
            key: pa.concat_arrays(
                [daily[key].combine_chunks().take(take), pool_ids.take(rest_rows)]
            ).cast(id_type),
            "last_seen": pa.array(
                np.concatenate([np.full(n_seen, stamp), last_seen[rest]]), TIMESTAMP
            ),
            "model_version": pa.concat_arrays([pc.cast(v, pa.string()) for v in versions]),
            "status": pa.array(status),
        }

    vecs, columns = _merge_vectors(
        daily_emb,
        rows,
        pool_emb,
        pool_scale,
        at,
        rest,
        pool_prev,
        pool_prev_valid,
        params,
        threads,
        meanwhile=other_columns,
    )
    if params.heuristic == "ap":
        prev_valid = np.concatenate([np.ones(n_seen, dtype=bool), pool_prev_valid[rest]])
        columns["prev_daily"] = _list_vectors(vecs.prev_daily, prev_valid)
    else:  # prev_daily only serves `ap`: null, the pool schema unchanged
        columns["prev_daily"] = pa.nulls(n_out, PREV_DAILY_TYPE)
    columns["embedding"] = fixed_size_list(vecs.embedding)
    columns["aggregate_scale"] = pa.array(vecs.scale)
    # cosine: updated rows only; norm, degenerate: the day's rows only (null elsewhere).
    cosine = np.zeros(n_out, dtype=np.float32)
    cosine[:n_updated] = vecs.cosine
    columns["cosine"] = pa.array(cosine, mask=np.arange(n_out) >= n_updated)
    not_seen = np.arange(n_out) >= n_seen
    norm = np.zeros(n_out, dtype=np.float64)
    norm[:n_seen] = vecs.norm
    columns["norm"] = pa.array(norm, mask=not_seen)
    degenerate = np.zeros(n_out, dtype=bool)
    degenerate[:n_seen] = vecs.degenerate
    columns["degenerate"] = pa.array(degenerate, mask=not_seen)
    schema = annotated_schema(key, id_type, dim)
    return pa.Table.from_arrays([columns[name] for name in schema.names], schema=schema)


@dataclass(frozen=True)
class DayResult:
    """What a day's merge yields: the new pool, the rows that changed, the expired ids."""

    pool: pa.Table
    changed: pa.Table
    expired_ids: pa.Array


POOL_COLUMNS = ("embedding", "aggregate_scale", "last_seen", "prev_daily", "model_version")


def split_annotated(annotated: pa.Table, id_column: str) -> DayResult:
    """The pool (all but expired), the changed rows (new and updated), the expired ids.

    Relies on `merge_day`'s block order (updated, new, carried, expired), so each part is
    a zero-copy slice; the order is checked.
    """
    status = annotated["status"].to_numpy()
    seen = int(np.count_nonzero((status == UPDATED) | (status == NEW)))
    live = int(np.count_nonzero(status != EXPIRED))
    if np.any(status[:seen] == CARRIED) or np.any(status[seen:live] != CARRIED):
        raise ValueError("split_annotated needs merge_day's row order")
    changed = annotated.slice(0, seen)
    return DayResult(
        pool=annotated.slice(0, live).select([id_column, *POOL_COLUMNS]),
        changed=changed.select([id_column, "embedding", "last_seen", "model_version"]),
        expired_ids=annotated[id_column].slice(live).combine_chunks(),
    )


def take_rows(table: pa.Table, rows: np.ndarray) -> pa.Table:
    """`table.take(rows)`, fixed-size vector columns gathered with NumPy (Arrow's take on
    list columns is several times slower)."""
    take = pa.array(rows, pa.int64())
    columns = []
    for name in table.column_names:
        column = table[name]
        if pa.types.is_fixed_size_list(column.type):
            columns.append(fixed_size_list(gather_rows(column, rows, column.type.list_size)))
        else:
            columns.append(column.take(take))
    return pa.Table.from_arrays(columns, schema=table.schema)


def gather_rows(column: pa.ChunkedArray, rows: np.ndarray, dim: int) -> np.ndarray:
    """rows [k] of a vector column (chunked, no nulls) as a (k, dim) float32 matrix.

    Gathered chunk by chunk into the output: a column of many chunks (a day's changed
    rows, one chunk per bucket) is never concatenated first, which held a third copy of
    the day's changed vectors while they were sorted.
    """
    rows = np.asarray(rows, dtype=np.int64)  # (Arrow's sort indices are uint64)
    if column.num_chunks == 1:
        return np.take(embedding_matrix(column, dim), rows, axis=0)
    out = np.empty((len(rows), dim), dtype=np.float32)
    starts = np.cumsum([0, *(len(chunk) for chunk in column.chunks)])
    chunk_of = np.searchsorted(starts, rows, side="right") - 1
    by_chunk = np.argsort(chunk_of, kind="stable")
    bounds = np.searchsorted(chunk_of[by_chunk], np.arange(column.num_chunks + 1))
    for k, chunk in enumerate(column.chunks):
        picked = by_chunk[bounds[k] : bounds[k + 1]]
        if len(picked):
            out[picked] = np.take(embedding_matrix(chunk, dim), rows[picked] - starts[k], axis=0)
    return out


def sorted_by(table: pa.Table, id_column: str) -> pa.Table:
    """`table` sorted by `id_column` (returned as is when it already is)."""
    ids = table[id_column]
    if table.num_rows < 2 or pc.all(pc.greater(ids[1:], ids[:-1])).as_py():
        return table
    return take_rows(table, pc.sort_indices(ids).to_numpy())
