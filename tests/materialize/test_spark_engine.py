"""The Spark engine runs the same kernel as the local engine and gives the same results."""

from __future__ import annotations

import datetime as dt

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest
from materialize_helpers import daily_table, unit_rows, write_daily

from materialize.job import MaterializeConfig, materialize_offline
from materialize.storage import offline_day_path, read_pool

DAY = dt.date(2024, 5, 1)
MODEL, ENTITY, KEY = "cvr", "pin", "pin_id"
VERSION = "cvr-00c0ffee-d8@2024-05-01"


def _write_days(workdir) -> None:
    rng = np.random.default_rng(7)
    ids0 = np.arange(200)
    write_daily(
        workdir,
        MODEL,
        ENTITY,
        DAY,
        daily_table(ids0, unit_rows(rng, 200), DAY, version=VERSION, id_column=KEY),
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
    _write_days(base)
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
