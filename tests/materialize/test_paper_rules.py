"""The paper's aggregation rules (appendix C) against values computed without the kernel.

Each expected value here comes from plain NumPy (float64) or pure Python on the test's own
inputs, never from `materialize.kernel`, so a kernel bug cannot hide in its own reference
(issue 13: `ap` over the pool's merged value, the dedup tie-break direction and the
re-normalised `ma` recursion all slipped past tests that compared the kernel with itself).
"""

from __future__ import annotations

import datetime as dt
import struct

import numpy as np
import pyarrow as pa
import pytest
from materialize_helpers import DIM, daily_table, unit_rows

from materialize.kernel import (
    CARRIED,
    UPDATED,
    KernelParams,
    dedup_last_of_day,
    embedding_matrix,
    empty_pool,
    merge_day,
    split_annotated,
)

DAY = dt.date(2024, 3, 1)
KEY = "user_id"


def day(n: int) -> dt.date:
    return DAY + dt.timedelta(days=n)


def run_days(days: list[dict[int, np.ndarray]], **kw) -> list[pa.Table]:
    """Merges day after day from an empty pool; days[n] maps id -> daily vector of day n.
    Returns each day's annotated table."""
    pool, out = empty_pool(KEY, pa.int64(), DIM), []
    for n, rows in enumerate(days):
        ids = sorted(rows)
        vectors = np.array([rows[i] for i in ids], np.float32).reshape(-1, DIM)
        params = KernelParams(day=day(n), id_column=KEY, **kw)
        annotated = merge_day(pool, daily_table(ids, vectors, day(n)), params, DIM)
        out.append(annotated)
        pool = split_annotated(annotated, KEY).pool
    return out


def row(table: pa.Table, entity: int, column: str = "embedding") -> np.ndarray:
    ids = table[KEY].to_pylist()
    return embedding_matrix(table[column], DIM)[ids.index(entity)]


def value(table: pa.Table, entity: int, column: str):
    return table[column][table[KEY].to_pylist().index(entity)].as_py()


def aggregate(table: pa.Table, entity: int) -> np.ndarray:
    """E(t) as the pool holds it: aggregate_scale * embedding (float64)."""
    return value(table, entity, "aggregate_scale") * row(table, entity).astype(np.float64)


def basis(k: int, sign: float = 1.0, scale: float = 1.0) -> np.ndarray:
    v = np.zeros(DIM, np.float32)
    v[k] = sign * scale
    return v


# ------------------------------------------------------------------ ma: the recursion


def _paper_ma(days: list[dict[int, np.ndarray]], w: float) -> list[dict[int, np.ndarray]]:
    """E(t) = w E(t-1) + (1 - w) E_daily(t) per entity in float64 (paper C.2); a first
    sighting takes its daily vector, an entity without a row keeps E(t-1)."""
    state: dict[int, np.ndarray] = {}
    history = []
    for rows in days:
        for entity, daily in rows.items():
            d = daily.astype(np.float64)
            state[entity] = w * state[entity] + (1 - w) * d if entity in state else d
        history.append(dict(state))
    return history


def _random_days(n_days: int, n_entities: int, seed: int) -> list[dict[int, np.ndarray]]:
    """Each entity seen on a random ~60 % of the days (so some are carried between)."""
    rng = np.random.default_rng(seed)
    days = []
    for _ in range(n_days):
        seen = np.flatnonzero(rng.random(n_entities) < 0.6)
        days.append(dict(zip(seen.tolist(), unit_rows(rng, len(seen)), strict=True)))
    return days


@pytest.mark.parametrize("renormalize", [True, False])
def test_ma_over_six_days_follows_the_papers_recursion(renormalize):
    days = _random_days(6, 30, seed=21)
    w = 0.8
    expected = _paper_ma(days, w)
    out = run_days(days, heuristic="ma", w=w, renormalize=renormalize)
    for t, (annotated, reference) in enumerate(zip(out, expected, strict=True)):
        for entity, e in reference.items():
            # The pool holds E(t) itself ...
            np.testing.assert_allclose(aggregate(annotated, entity), e, rtol=2e-6, atol=1e-7)
            # ... and publishes E / |E| (re-normalised) or E (not).
            published = e / np.linalg.norm(e) if renormalize else e
            np.testing.assert_allclose(row(annotated, entity), published, rtol=2e-6, atol=1e-7)
            if entity in days[t]:
                assert value(annotated, entity, "norm") == pytest.approx(np.linalg.norm(e))
    # The test can tell: feeding the unit value into the next day (the old behaviour) is
    # another direction by the last day for most entities that were updated several times.
    old_state: dict[int, np.ndarray] = {}
    for rows in days:
        for entity, d in rows.items():
            merged = w * old_state[entity] + (1 - w) * d if entity in old_state else d
            old_state[entity] = merged / np.linalg.norm(merged)
    last = expected[-1]
    apart = [1 - old_state[i] @ (last[i] / np.linalg.norm(last[i])) > 1e-4 for i in sorted(last)]
    assert sum(apart) > len(apart) // 2


def test_re_normalisation_changes_only_the_length_of_what_is_published():
    """The README's claim: with re-normalisation on, every published value has the
    direction of the paper's E(t), on every day (not only after the first merge)."""
    days = _random_days(5, 20, seed=22)
    unit = run_days(days, heuristic="ma", w=0.8, renormalize=True)
    plain = run_days(days, heuristic="ma", w=0.8, renormalize=False)
    for a, b in zip(unit, plain, strict=True):
        for entity in a[KEY].to_pylist():
            u, p = row(a, entity).astype(np.float64), row(b, entity).astype(np.float64)
            assert np.linalg.norm(u) == pytest.approx(1.0, abs=1e-6)
            assert u @ p / np.linalg.norm(p) == pytest.approx(1.0, abs=1e-6)


# ------------------------------------------------------------------ ap


def test_ap_over_three_days_averages_the_two_latest_daily_vectors():
    """Daily a, b, c on three days: 0.5 (b + c), not 0.5 (0.5 (a + b) + c)."""
    rng = np.random.default_rng(23)
    a, b, c = unit_rows(rng, 3)
    out = run_days([{1: a}, {1: b}, {1: c}], heuristic="ap", renormalize=False)
    np.testing.assert_allclose(row(out[1], 1), 0.5 * (a + b), rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(row(out[2], 1), 0.5 * (b + c), rtol=1e-6, atol=1e-7)
    np.testing.assert_array_equal(row(out[2], 1, "prev_daily"), c)
    wrong = 0.5 * (0.5 * (a + b) + c)  # what averaging the pool's merged value gives
    assert np.abs(row(out[2], 1) - wrong).max() > 1e-3


def test_ap_entity_carried_for_a_day_keeps_prev_daily_exactly():
    rng = np.random.default_rng(24)
    a, b, c, other = unit_rows(rng, 4)
    days = [{1: a}, {1: b}, {2: other}, {1: c}]  # entity 1 carried on day 2
    out = run_days(days, heuristic="ap", renormalize=False)
    assert value(out[2], 1, "status") == CARRIED
    np.testing.assert_array_equal(row(out[2], 1, "prev_daily"), b)  # bit for bit
    np.testing.assert_array_equal(row(out[2], 1), row(out[1], 1))
    np.testing.assert_allclose(row(out[3], 1), 0.5 * (b + c), rtol=1e-6, atol=1e-7)


# ------------------------------------------------------------------ dedup tie-break


def _fnv1a_of_float32_bits(vector: np.ndarray) -> int:
    """The documented tie-break hash, written independently in pure Python: FNV-1a-style
    over each float32's bit pattern (as a 32-bit word), 64-bit wrap-around."""
    h = 0xCBF29CE484222325
    for word in struct.unpack(f"<{len(vector)}I", np.asarray(vector, "<f4").tobytes()):
        h = ((h ^ word) * 0x100000001B3) % 2**64
    return h


def test_dedup_tie_on_ts_goes_to_the_larger_hash_pinned():
    """Two rows of one entity with the same `ts`: e_1 wins over e_0, in either order.

    Pinned: FNV(e_1) = 0xfc3e151d369a39c5 > FNV(e_0) = 0x1ea6d8c44f9a39c5, and a later
    row by `ts` beats both whatever its hash.
    """
    e0, e1 = basis(0), basis(1)
    assert _fnv1a_of_float32_bits(e0) == 0x1EA6D8C44F9A39C5
    assert _fnv1a_of_float32_bits(e1) == 0xFC3E151D369A39C5
    for order in ([e0, e1], [e1, e0]):
        daily = daily_table([5, 5], np.array(order), DAY, seconds=[30, 30])
        np.testing.assert_array_equal(row(dedup_last_of_day(daily, KEY, DIM), 5), e1)
    later = daily_table([5, 5, 5], np.array([e1, e0, e1]), DAY, seconds=[30, 31, 30])
    np.testing.assert_array_equal(row(dedup_last_of_day(later, KEY, DIM), 5), e0)


def test_dedup_ties_follow_the_independent_hash_on_random_rows():
    rng = np.random.default_rng(25)
    rows = unit_rows(rng, 40)
    ids = np.repeat(np.arange(10), 4)  # four rows per entity, all at the same ts
    daily = daily_table(ids, rows, DAY, seconds=np.zeros(40, int))
    kept = dedup_last_of_day(daily.take(pa.array(rng.permutation(40))), KEY, DIM)
    for entity in range(10):
        candidates = rows[ids == entity]
        best = max(candidates, key=_fnv1a_of_float32_bits)
        np.testing.assert_array_equal(row(kept, entity), best)


# ------------------------------------------------------------------ degenerate merges


@pytest.mark.parametrize(("heuristic", "w"), [("ma", 0.5), ("ap", 0.8)], ids=["ma w=0.5", "ap"])
@pytest.mark.parametrize("renormalize", [True, False])
def test_a_cancelling_merge_keeps_the_previous_published_value(heuristic, w, renormalize):
    """[1,0,...] then [-1,0,...]: E(t) is exactly zero. Nothing zero is published: the
    entity keeps [1,0,...], is flagged degenerate, and the pool still holds E(t) = 0, so
    the next day continues the paper's recursion from zero."""
    out = run_days(
        [{1: basis(0)}, {1: basis(0, -1)}, {1: basis(1)}],
        heuristic=heuristic,
        w=w,
        renormalize=renormalize,
    )
    cancelled = out[1]
    assert value(cancelled, 1, "status") == UPDATED
    assert value(cancelled, 1, "degenerate") is True
    assert value(cancelled, 1, "norm") == 0.0
    np.testing.assert_array_equal(row(cancelled, 1), basis(0))
    np.testing.assert_array_equal(aggregate(cancelled, 1), np.zeros(DIM))
    assert value(cancelled, 1, "cosine") == pytest.approx(1.0)
    # Day 3: ma gives 0.5 * 0 + 0.5 * e_1; ap gives 0.5 (-e_0 + e_1).
    e = 0.5 * basis(1) if heuristic == "ma" else 0.5 * (basis(0, -1) + basis(1))
    expected = e / np.linalg.norm(e) if renormalize else e
    np.testing.assert_allclose(row(out[2], 1), expected, rtol=1e-6, atol=1e-7)
    assert value(out[2], 1, "degenerate") is False


def test_a_near_cancelling_merge_is_degenerate_too():
    """w=0.8 over a history of norm exactly 0.25 against today's opposite unit vector:
    0.8 * 0.25 = 0.2 = 0.2 * 1, a cancellation up to rounding, whose direction is noise."""
    history = basis(0, scale=0.25)
    out = run_days([{1: history}, {1: basis(0, -1)}], heuristic="ma", w=0.8)
    assert value(out[1], 1, "degenerate") is True
    assert value(out[1], 1, "norm") <= 1e-6
    np.testing.assert_allclose(row(out[1], 1), basis(0), rtol=1e-6)


def test_huge_vectors_publish_their_direction_not_zero():
    """Daily vectors x1e30: float32 norms overflow (the old kernel published zeros)."""
    rng = np.random.default_rng(26)
    a, b = unit_rows(rng, 2)
    for renormalize in (True, False):
        out = run_days(
            [{1: a * np.float32(1e30)}, {1: b * np.float32(1e30)}],
            heuristic="ma",
            w=0.8,
            renormalize=renormalize,
        )
        e = 1e30 * (0.8 * a.astype(np.float64) + 0.2 * b)
        published = row(out[1], 1)
        assert np.isfinite(published).all()
        expected = e / np.linalg.norm(e) if renormalize else e
        np.testing.assert_allclose(published, expected, rtol=1e-5)
        assert value(out[1], 1, "norm") == pytest.approx(np.linalg.norm(e), rel=1e-6)
        assert value(out[1], 1, "degenerate") is False


def test_vectors_near_float32_max_publish_their_direction_not_zero():
    """Components of 3e38 (valid float32): |E| = 8.5e38 is beyond float32's range."""
    v = np.full(DIM, 3e38, np.float32)
    v[0] = -3e38
    out = run_days([{1: v}], heuristic="acc")
    expected = v.astype(np.float64) / np.linalg.norm(v.astype(np.float64))
    np.testing.assert_allclose(row(out[0], 1), expected, rtol=1e-6)
    assert value(out[0], 1, "norm") == pytest.approx(3e38 * np.sqrt(DIM), rel=1e-6)


def test_tiny_vectors_publish_their_direction_not_zero():
    """x1e-25: float32 squares underflow to 0 (the old kernel's norm was 0)."""
    a = unit_rows(np.random.default_rng(27), 1)[0] * np.float32(1e-25)
    out = run_days([{1: a}], heuristic="ma")
    np.testing.assert_allclose(row(out[0], 1), a / np.linalg.norm(a.astype(np.float64)), 1e-5)
    assert value(out[0], 1, "degenerate") is False


def test_a_pool_without_aggregate_scale_reads_as_its_stored_value():
    """Pools written before this column (issue 13) hold re-normalised values: their stored
    value is taken as E(t-1) once."""
    rng = np.random.default_rng(28)
    a, b = unit_rows(rng, 2)
    pool = split_annotated(run_days([{1: a}])[0], KEY).pool.drop_columns(["aggregate_scale"])
    params = KernelParams(day=day(1), id_column=KEY, heuristic="ma", w=0.8, renormalize=False)
    out = merge_day(pool, daily_table([1], b[None], day(1)), params, DIM)
    np.testing.assert_allclose(row(out, 1), 0.8 * a + 0.2 * b, rtol=1e-6, atol=1e-7)
