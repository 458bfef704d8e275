"""The Spark engine runs the same kernel as the local engine and gives the same results."""

from __future__ import annotations

import datetime as dt
import struct

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest
from materialize_helpers import daily_table, flip_a_vector_byte, unit_rows, write_daily

from materialize.job import MaterializeConfig, materialize_offline
from materialize.kernel import embedding_matrix
from materialize.storage import PoolIntegrityError, offline_day_path, read_pool

DAY = dt.date(2024, 5, 1)
MODEL, ENTITY, KEY = "cvr", "pin", "pin_id"
VERSION = "cvr-00c0ffee-d8@2024-05-01"


def _write_days(workdir) -> dict:
    """Writes days 0 and 1; returns their inputs for the independent reference."""
    rng = np.random.default_rng(7)
    ids0 = np.arange(200)
    emb0 = unit_rows(rng, 200)
    write_daily(
        workdir,
        MODEL,
        ENTITY,
        DAY,
        daily_table(ids0, emb0, DAY, version=VERSION, id_column=KEY),
    )
    # Day 1: repeats (dedup), ties on ts, new ids; two files, list and fixed-size lists.
    ids1 = np.concatenate([np.arange(50, 120), np.arange(50, 60), np.arange(300, 330)])
    seconds = np.concatenate([np.arange(70) + 100, np.full(10, 100 + 0), np.arange(30)])
    emb = unit_rows(rng, len(ids1))
    day1 = DAY + dt.timedelta(days=1)
    write_daily(
        workdir,
        MODEL,
        ENTITY,
        day1,
        daily_table(ids1[:80], emb[:80], day1, seconds[:80], VERSION, KEY, fixed=False),
        "a",
    )
    write_daily(
        workdir,
        MODEL,
        ENTITY,
        day1,
        daily_table(ids1[80:], emb[80:], day1, seconds[80:], VERSION, KEY),
        "b",
    )
    return {"ids0": ids0, "emb0": emb0, "ids1": ids1, "seconds1": seconds, "emb1": emb}


def _fnv1a_of_float32_bits(vector: np.ndarray) -> int:
    """The dedup tie-break hash in pure Python (as in test_paper_rules)."""
    h = 0xCBF29CE484222325
    for word in struct.unpack(f"<{len(vector)}I", np.asarray(vector, "<f4").tobytes()):
        h = ((h ^ word) * 0x100000001B3) % 2**64
    return h


def _ap_reference(days: dict) -> dict[int, tuple[np.ndarray, np.ndarray]]:
    """Day 1 of `ap` (re-normalised) entity by entity in float64, without the kernel:
    id -> (published vector, prev_daily). Dedup: the latest `ts`, ties to the larger hash."""
    state = {i: (e.astype(np.float64), e) for i, e in zip(days["ids0"], days["emb0"], strict=True)}
    last: dict[int, tuple[int, int, np.ndarray]] = {}
    for i, sec, e in zip(days["ids1"], days["seconds1"], days["emb1"], strict=True):
        key = (int(sec), _fnv1a_of_float32_bits(e))
        if i not in last or key > last[i][:2]:
            last[i] = (*key, e)
    out = {i: (prev / np.linalg.norm(prev), daily) for i, (prev, daily) in state.items()}
    for i, (_, _, e) in last.items():
        value = 0.5 * (state[i][1].astype(np.float64) + e) if i in state else e.astype(float)
        out[i] = (value / np.linalg.norm(value), e)
    return out


def _sorted(table: pa.Table) -> pa.Table:
    table = table.take(pc.sort_indices(table, [(KEY, "ascending")]))
    return table.cast(
        pa.schema(
            [
                f.with_type(pa.list_(pa.float32()))
                if pa.types.is_list(f.type) or pa.types.is_fixed_size_list(f.type)
                else f
                for f in table.schema
            ]
        )
    )


@pytest.mark.spark
def test_spark_and_local_engines_agree_exactly(spark, tmp_path):
    """`ap` touches every pool column (prev_daily too); dedup ties and both list types."""
    heuristic = "ap"
    import shutil

    from derm_features.core.workdir import Workdir

    base = Workdir(tmp_path / "base")
    inputs = _write_days(base)
    day1 = DAY + dt.timedelta(days=1)
    # Day 0 locally once; day 1 on each engine from that same pool (also checks that Spark
    # reads the local engine's pool layout).
    materialize_offline(
        MaterializeConfig(
            workdir=base,
            model=MODEL,
            entity=ENTITY,
            day=DAY,
            heuristic=heuristic,  # so pool(t-1) holds prev_daily
            online=False,
            buckets=2,
        )
    )
    results = {}
    for engine in ("local", "spark"):
        wd = Workdir(tmp_path / engine)
        shutil.copytree(base.root, wd.root)
        report = materialize_offline(
            MaterializeConfig(
                workdir=wd,
                model=MODEL,
                entity=ENTITY,
                day=day1,
                engine=engine,
                heuristic=heuristic,
                online=False,
            ),
            spark=spark,
        )
        results[engine] = (
            _sorted(read_pool(wd.pool(MODEL, ENTITY, day1))),
            pq.read_table(offline_day_path(wd.offline(MODEL, ENTITY), day1)),
            report.metrics,
        )
    (pool_l, off_l, m_l), (pool_s, off_s, m_s) = results["local"], results["spark"]
    assert pool_l.num_rows == 230
    assert pool_l["prev_daily"].null_count == 0  # `ap` on both days: every value kept
    assert pool_l.schema == pool_s.schema
    assert pool_l.equals(pool_s)
    assert off_l.equals(off_s)
    assert off_l.num_rows == 100
    assert m_l == m_s
    # Both engines call one kernel, so their equality cannot catch a kernel bug: the
    # local result also matches `ap` computed entity by entity without it.
    reference = _ap_reference(inputs)
    assert sorted(pool_l[KEY].to_pylist()) == sorted(reference)
    published = embedding_matrix(pool_l["embedding"], 8)
    kept = embedding_matrix(pool_l["prev_daily"], 8)
    for k, entity in enumerate(pool_l[KEY].to_pylist()):
        value, prev_daily = reference[entity]
        np.testing.assert_allclose(published[k], value, rtol=2e-6, atol=1e-7)
        np.testing.assert_array_equal(kept[k], prev_daily)

    # Day 2: one daily row, so a bucket has no daily rows at all (carried only) on Spark too.
    day2 = day1 + dt.timedelta(days=1)
    pools = {}
    for engine in ("local", "spark"):
        wd = Workdir(tmp_path / engine)
        one = daily_table([300], unit_rows(np.random.default_rng(8), 1), day2, version=VERSION,
                          id_column=KEY)  # fmt: skip
        write_daily(wd, MODEL, ENTITY, day2, one)
        config = MaterializeConfig(
            workdir=wd, model=MODEL, entity=ENTITY, day=day2, engine=engine,
            heuristic=heuristic, online=False,
        )  # fmt: skip
        metrics = materialize_offline(config, spark=spark).metrics
        assert (metrics["updated"], metrics["carried"]) == (1, 229)
        pools[engine] = _sorted(read_pool(wd.pool(MODEL, ENTITY, day2)))
    assert pools["local"].equals(pools["spark"])

    # Day 3: a 0-row daily file is a carry-over-only day on both engines.
    day3 = day2 + dt.timedelta(days=1)
    for engine in ("local", "spark"):
        wd = Workdir(tmp_path / engine)
        empty = daily_table([], np.zeros((0, 8), np.float32), day3, version=VERSION, id_column=KEY)
        write_daily(wd, MODEL, ENTITY, day3, empty)
        config = MaterializeConfig(
            workdir=wd, model=MODEL, entity=ENTITY, day=day3, engine=engine,
            heuristic=heuristic, online=False,
        )  # fmt: skip
        metrics = materialize_offline(config, spark=spark).metrics
        assert (metrics["carried"], metrics["new"], metrics["updated"]) == (230, 0, 0)
        assert _sorted(read_pool(wd.pool(MODEL, ENTITY, day3))).equals(pools[engine])


@pytest.mark.spark
def test_spark_refuses_a_corrupted_pool_bucket_by_name(spark, tmp_path):
    """A checksum mismatch found inside a Spark task reaches the driver as the same
    PoolIntegrityError (exit 2 from the CLI), not a Py4J traceback."""
    from derm_features.core.workdir import Workdir

    wd = Workdir(tmp_path / "wd")
    _write_days(wd)
    materialize_offline(
        MaterializeConfig(workdir=wd, model=MODEL, entity=ENTITY, day=DAY, online=False, buckets=2)
    )
    flip_a_vector_byte(wd.pool(MODEL, ENTITY, DAY) / "bucket=1" / "part-00000.arrow")
    day1 = DAY + dt.timedelta(days=1)
    config = MaterializeConfig(
        workdir=wd, model=MODEL, entity=ENTITY, day=day1, engine="spark", online=False
    )
    with pytest.raises(PoolIntegrityError, match="bucket=1/part-00000.arrow has crc32"):
        materialize_offline(config, spark=spark)
    assert not wd.pool(MODEL, ENTITY, day1).exists()
