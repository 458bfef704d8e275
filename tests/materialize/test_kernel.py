"""The aggregation kernel on its own: dedup, heuristics, carry-over, TTL, normalisation."""

from __future__ import annotations

import datetime as dt

import numpy as np
import pyarrow as pa
import pytest
from materialize_helpers import DIM, daily_table, unit_rows

from materialize.kernel import (
    CARRIED,
    EXPIRED,
    NEW,
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


def params(day=DAY, **kw) -> KernelParams:
    return KernelParams(day=day, id_column=KEY, **kw)


def run(pool, daily, day=DAY, **kw):
    return merge_day(pool, daily, params(day, **kw), DIM)


def emb_of(table: pa.Table, entity: int, column: str = "embedding") -> np.ndarray:
    ids = table[KEY].to_pylist()
    return embedding_matrix(table[column], DIM)[ids.index(entity)]


def test_dedup_keeps_last_by_ts_and_breaks_ties_by_value_not_order():
    rng = np.random.default_rng(1)
    e = unit_rows(rng, 4)
    daily = daily_table([7, 7, 7, 9], e, DAY, seconds=[10, 30, 30, 5])
    forward = dedup_last_of_day(daily, KEY, DIM)
    backward = dedup_last_of_day(daily.take(pa.array([3, 2, 1, 0])), KEY, DIM)
    assert forward[KEY].to_pylist() == [7, 9]
    chosen = emb_of(forward, 7)
    assert any(np.array_equal(chosen, e[i]) for i in (1, 2))  # one of the ts=30 rows
    np.testing.assert_array_equal(emb_of(backward, 7), chosen)  # same row in any order


def test_first_day_takes_daily_embeddings_under_every_heuristic():
    rng = np.random.default_rng(2)
    e = unit_rows(rng, 3)
    daily = daily_table([1, 2, 3], e, DAY)
    for heuristic in ("acc", "ma", "ap"):
        out = run(empty_pool(KEY, pa.int64(), DIM), daily, heuristic=heuristic)
        assert out["status"].to_pylist() == [NEW] * 3
        np.testing.assert_allclose(embedding_matrix(out["embedding"], DIM), e, rtol=1e-6)
        if heuristic == "ap":
            np.testing.assert_array_equal(embedding_matrix(out["prev_daily"], DIM), e)
        else:  # only `ap` needs the previous daily embedding
            assert out["prev_daily"].null_count == 3


def _two_days(heuristic, renormalize=False, w=0.8):
    rng = np.random.default_rng(3)
    e1, e2 = unit_rows(rng, 2), unit_rows(rng, 1)
    day1 = run(empty_pool(KEY, pa.int64(), DIM), daily_table([1, 2], e1, DAY), heuristic=heuristic)
    pool1 = split_annotated(day1, KEY).pool
    day2 = run(
        pool1,
        daily_table([1], e2, DAY + dt.timedelta(days=1)),
        DAY + dt.timedelta(days=1),
        heuristic=heuristic,
        renormalize=renormalize,
        w=w,
    )
    return e1, e2, day2


@pytest.mark.parametrize("heuristic", ["acc", "ma", "ap"])
def test_heuristics_and_carry_over(heuristic):
    e1, e2, out = _two_days(heuristic)
    expected = {"acc": e2[0], "ma": 0.8 * e1[0] + 0.2 * e2[0], "ap": 0.5 * (e1[0] + e2[0])}
    np.testing.assert_allclose(emb_of(out, 1), expected[heuristic], rtol=1e-5, atol=1e-6)
    if heuristic == "ap":
        np.testing.assert_array_equal(emb_of(out, 1, "prev_daily"), e2[0])
        np.testing.assert_array_equal(emb_of(out, 2, "prev_daily"), e1[1])  # carried
    # Entity 2 had no row on day 2: value and last_seen carried over.
    np.testing.assert_allclose(emb_of(out, 2), e1[1], rtol=1e-6, atol=1e-7)
    status = dict(zip(out[KEY].to_pylist(), out["status"].to_pylist(), strict=True))
    assert status == {1: UPDATED, 2: CARRIED}
    last_seen = dict(zip(out[KEY].to_pylist(), out["last_seen"].to_pylist(), strict=True))
    assert last_seen[2].date() == DAY and last_seen[1].date() == DAY + dt.timedelta(days=1)


def test_renormalize_gives_unit_norm_and_same_direction():
    e1, e2, raw = _two_days("ma", renormalize=False)
    _, _, unit = _two_days("ma", renormalize=True)
    assert np.linalg.norm(emb_of(raw, 1)) < 0.999
    np.testing.assert_allclose(np.linalg.norm(emb_of(unit, 1)), 1.0, rtol=1e-6)
    cos = emb_of(raw, 1) @ emb_of(unit, 1) / np.linalg.norm(emb_of(raw, 1))
    assert cos == pytest.approx(1.0, abs=1e-6)


def test_norm_is_the_merged_length_before_renormalising():
    e1, e2, raw = _two_days("ma", renormalize=False)
    _, _, unit = _two_days("ma", renormalize=True)
    expected = float(np.linalg.norm(emb_of(raw, 1)))  # |w * e1 + (1 - w) * e2|, below 1
    for out in (raw, unit):
        norms = dict(zip(out[KEY].to_pylist(), out["norm"].to_pylist(), strict=True))
        assert norms[1] == pytest.approx(expected, rel=1e-5)
    assert expected < 0.999


def test_ttl_keeps_exactly_ttl_days_and_drops_one_more():
    rng = np.random.default_rng(4)
    pool = split_annotated(
        run(empty_pool(KEY, pa.int64(), DIM), daily_table([1], unit_rows(rng, 1), DAY)), KEY
    ).pool
    empty_daily = daily_table([], np.zeros((0, DIM), np.float32), DAY)
    kept = run(pool, empty_daily, DAY + dt.timedelta(days=90), ttl_days=90)
    dropped = run(pool, empty_daily, DAY + dt.timedelta(days=91), ttl_days=90)
    assert kept["status"].to_pylist() == [CARRIED]
    assert dropped["status"].to_pylist() == [EXPIRED]
    result = split_annotated(dropped, KEY)
    assert result.pool.num_rows == 0 and result.expired_ids.to_pylist() == [1]


def test_accepts_list_and_fixed_size_list_embeddings_alike():
    rng = np.random.default_rng(5)
    e = unit_rows(rng, 5)
    pool = empty_pool(KEY, pa.int64(), DIM)
    fixed = run(pool, daily_table([5, 4, 3, 2, 1], e, DAY, fixed=True))
    listed = run(pool, daily_table([5, 4, 3, 2, 1], e, DAY, fixed=False))
    assert fixed.equals(listed)


def test_cosine_is_reported_for_updated_entities_only():
    e1, e2, out = _two_days("ma", renormalize=True)
    cosine = dict(zip(out[KEY].to_pylist(), out["cosine"].to_pylist(), strict=True))
    merged = emb_of(out, 1)
    assert cosine[2] is None
    assert cosine[1] == pytest.approx(float(e1[0] @ merged), abs=1e-5)


def test_bad_params_are_refused():
    with pytest.raises(ValueError, match="heuristic"):
        params(heuristic="mean")
    with pytest.raises(ValueError, match="w must be"):
        params(w=1.5)


def test_split_keeps_expired_rows_out_of_pool_and_changed():
    rng = np.random.default_rng(6)
    pool = split_annotated(
        run(empty_pool(KEY, pa.int64(), DIM), daily_table([1, 2], unit_rows(rng, 2), DAY)), KEY
    ).pool
    later = DAY + dt.timedelta(days=100)
    result = split_annotated(run(pool, daily_table([3], unit_rows(rng, 1), later), later), KEY)
    assert result.changed[KEY].to_pylist() == [3]
    assert result.pool[KEY].to_pylist() == [3]
    assert sorted(result.expired_ids.to_pylist()) == [1, 2]


def _reference_day(pool: dict, daily: dict, day: dt.date, w: float, ttl_days: int) -> dict:
    """The `ma` rules entity by entity in plain Python: id -> (E(t), last_seen day).

    E(t) is the paper's aggregate (C.2), never re-normalised between days (issue 13: the
    old reference fed the unit value into the next day); the kernel publishes E / |E|.
    """
    out = {}
    for entity, (value, seen) in pool.items():
        if entity in daily:
            out[entity] = (w * value + (1 - w) * daily[entity], day)
        elif (day - seen).days <= ttl_days:
            out[entity] = (value, seen)
    for entity, value in daily.items():
        out.setdefault(entity, (value, day))
    return out


def test_unsorted_pool_with_expired_updated_new_and_carried_matches_reference():
    """Pool rows in shuffled id order, some expiring between updated ones: the kernel's
    positions (sort + binary search) and block layout match an entity-by-entity merge."""
    rng = np.random.default_rng(8)
    first, later = DAY, DAY + dt.timedelta(days=3)
    ids0 = rng.permutation(40)
    e0 = unit_rows(rng, 40)
    day0 = split_annotated(run(empty_pool(KEY, pa.int64(), DIM), daily_table(ids0, e0, first)), KEY)
    # Refresh half of the pool on day 2 (rows in shuffled order), so the rest is older.
    ids2 = rng.permutation(40)[:20]
    e2 = unit_rows(rng, 20)
    mid = first + dt.timedelta(days=2)
    day2 = run(day0.pool, daily_table(ids2, e2, mid), mid, w=0.5)
    pool2 = split_annotated(day2, KEY).pool
    ids3 = np.concatenate([rng.permutation(40)[:15], [100, 77, 55]])
    e3 = unit_rows(rng, len(ids3))
    out = run(pool2, daily_table(ids3, e3, later), later, w=0.5, ttl_days=2)

    reference = _reference_day({i: (e0[k], first) for k, i in enumerate(ids0)}, {}, first, 0.5, 2)
    reference = _reference_day(reference, dict(zip(ids2, e2, strict=True)), mid, 0.5, 2)
    reference = _reference_day(reference, dict(zip(ids3, e3, strict=True)), later, 0.5, 2)
    result = split_annotated(out, KEY)
    assert sorted(result.pool[KEY].to_pylist()) == sorted(reference)
    assert set(result.expired_ids.to_pylist()) == set(ids0.tolist()) - set(reference)
    assert len(result.expired_ids) > 0
    for entity, (value, seen) in reference.items():
        unit = value / np.linalg.norm(value)
        np.testing.assert_allclose(emb_of(result.pool, entity), unit, rtol=1e-5, atol=1e-6)
        row = result.pool[KEY].to_pylist().index(entity)
        assert result.pool["last_seen"][row].as_py().date() == seen
    assert result.changed[KEY].to_pylist() == sorted(set(ids3.tolist()))


def test_ap_on_a_pool_without_prev_daily_takes_the_daily_embedding():
    rng = np.random.default_rng(9)
    e1, e2 = unit_rows(rng, 1), unit_rows(rng, 1)
    pool = split_annotated(
        run(empty_pool(KEY, pa.int64(), DIM), daily_table([1], e1, DAY), heuristic="ma"), KEY
    ).pool
    later = DAY + dt.timedelta(days=1)
    out = run(pool, daily_table([1], e2, later), later, heuristic="ap")
    np.testing.assert_allclose(emb_of(out, 1), e2[0], rtol=1e-6)
    np.testing.assert_array_equal(emb_of(out, 1, "prev_daily"), e2[0])


@pytest.mark.parametrize("heuristic", ["ma", "acc", "ap"])
def test_blocked_threaded_pass_equals_one_block_on_one_thread(monkeypatch, heuristic):
    """`_merge_vectors` splits rows into blocks and threads: the result must not depend on
    either (many small blocks on 3 threads vs one block on one thread)."""
    import materialize.kernel as kernel

    rng = np.random.default_rng(11)
    ids0 = rng.permutation(700)
    pool = split_annotated(
        run(empty_pool(KEY, pa.int64(), DIM), daily_table(ids0, unit_rows(rng, 700), DAY)), KEY
    ).pool
    later = DAY + dt.timedelta(days=1)
    ids1 = np.concatenate([rng.choice(700, 400, replace=False), np.arange(1000, 1100)])
    ids1 = np.concatenate([ids1, ids1[:50]])  # repeats: dedup before the vector pass
    daily = daily_table(ids1, unit_rows(rng, len(ids1)), later)
    monkeypatch.setattr(kernel, "_BLOCK_ROWS", 4096)
    whole = merge_day(pool, daily, params(later, heuristic=heuristic), DIM, threads=1)
    monkeypatch.setattr(kernel, "_BLOCK_ROWS", 16)
    blocked = merge_day(pool, daily, params(later, heuristic=heuristic), DIM, threads=3)
    assert blocked.equals(whole)
    status = whole["status"].to_numpy()
    assert (status == UPDATED).sum() == 400 and (status == NEW).sum() == 100
    assert (status == CARRIED).sum() == 300
