"""One day's job end to end on real files, real Feast (DuckDB offline) and real Redis."""

from __future__ import annotations

import dataclasses
import datetime as dt
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from materialize_helpers import DIM, VERSION, daily_table, tree_bytes, unit_rows, write_daily

from derm_features.core.workdir import Workdir
from materialize import health
from materialize.job import MaterializeConfig, OnlineError, materialize_day, push_online
from materialize.kernel import embedding_matrix
from materialize.storage import MaterializeError, offline_day_path, read_pool

DAY = dt.date(2024, 3, 1)
DERM = str(Path(sys.executable).with_name("derm"))
MODEL, ENTITY, KEY = "ctr", "user", "user_id"


def day(n: int) -> dt.date:
    return DAY + dt.timedelta(days=n)


def config(workdir, d, **kw) -> MaterializeConfig:
    kw.setdefault("online", False)
    kw.setdefault("buckets", 3)
    return MaterializeConfig(workdir=workdir, model=MODEL, entity=ENTITY, day=d, **kw)


def add_day(workdir, d, ids, seed=0, version=VERSION, name="part-0") -> np.ndarray:
    e = unit_rows(np.random.default_rng(seed), len(ids))
    write_daily(workdir, MODEL, ENTITY, d, daily_table(ids, e, d, version=version), name)
    return e


def test_two_days_pool_offline_metrics_and_idempotent_rerun(workdir):
    add_day(workdir, day(0), [1, 2, 3], seed=1)
    add_day(workdir, day(1), [2, 4], seed=2)
    materialize_day(config(workdir, day(0)))
    pool0 = tree_bytes(workdir.pool(MODEL, ENTITY, day(0)))
    first = materialize_day(config(workdir, day(1)))
    pool1 = tree_bytes(workdir.pool(MODEL, ENTITY, day(1)))
    offline1 = pq.read_table(offline_day_path(workdir.offline(MODEL, ENTITY), day(1))).sort_by(KEY)

    again = materialize_day(config(workdir, day(1)))  # re-run of the newest day
    assert tree_bytes(workdir.pool(MODEL, ENTITY, day(1))) == pool1
    assert tree_bytes(workdir.pool(MODEL, ENTITY, day(0))) == pool0  # t-1 untouched
    offline = pq.read_table(workdir.offline(MODEL, ENTITY))
    assert sorted(offline[KEY].to_pylist()) == [1, 2, 2, 3, 4]  # no duplicate rows
    assert offline1[KEY].to_pylist() == [2, 4]
    assert set(offline1["event_timestamp"].to_pylist()) == {dt.datetime(2024, 3, 3, tzinfo=dt.UTC)}
    assert sorted(read_pool(workdir.pool(MODEL, ENTITY, day(1)))[KEY].to_pylist()) == [1, 2, 3, 4]

    m = again.metrics
    assert (m["live"], m["new"], m["updated"], m["carried"], m["expired"]) == (4, 1, 1, 2, 0)
    assert m["coverage"] == pytest.approx(0.5) and m["carried_age_max_days"] == 1.0
    assert first.metrics == m
    table = health.read_health(workdir.metrics)
    assert table.num_rows == 2  # one row per day even after the re-run


def test_first_pool_day_has_no_coverage_and_cosine_quantiles_match_the_pools(workdir):
    ids = list(range(1, 21))
    add_day(workdir, day(0), ids, seed=1)
    add_day(workdir, day(1), ids[:15], seed=2)  # 15 updated, 5 carried
    first = materialize_day(config(workdir, day(0))).metrics
    assert first["new"] == 20 and first["coverage"] is None  # no pool before: undefined, not 0
    assert first["cosine_p50"] is None  # nothing updated: no day-to-day cosine
    second = materialize_day(config(workdir, day(1))).metrics
    assert second["coverage"] == 1.0

    def vectors(d) -> dict[int, np.ndarray]:
        pool = read_pool(workdir.pool(MODEL, ENTITY, d))
        return dict(
            zip(pool[KEY].to_pylist(), embedding_matrix(pool["embedding"], DIM), strict=True)
        )

    before, after = vectors(day(0)), vectors(day(1))
    cosines = [float(before[i] @ after[i]) for i in ids[:15]]  # the published rows are unit
    for q in health.COSINE_QUANTILES:
        assert second[f"cosine_p{q}"] == pytest.approx(np.percentile(cosines, q), abs=1e-5)
    assert second["cosine_p5"] < second["cosine_p50"] < second["cosine_p95"]
    table = health.read_health(workdir.metrics)
    assert table["coverage"].to_pylist() == [None, 1.0]

    # a table of an older derm: coverage 0 on the first day, no quantiles but p5
    older = table.drop([f"cosine_p{q}" for q in (25, 50, 75, 95)])
    older = older.set_column(older.schema.get_field_index("coverage"), "coverage",
                             pa.array([0.0, 1.0]))  # fmt: skip
    pq.write_table(older, workdir.metrics / health.HEALTH_FILE)
    read = health.read_health(workdir.metrics)
    assert read["coverage"].to_pylist() == [None, 1.0]
    assert read["cosine_p50"].to_pylist() == [None, None]  # not counted then: null, not 0
    assert read["cosine_p5"].to_pylist() == table["cosine_p5"].to_pylist()


def test_fold_from_reads_earlier_days_as_one_input_stamped_at_the_day(workdir):
    e0 = add_day(workdir, day(0), [1, 2], seed=1)
    e1 = add_day(workdir, day(1), [2, 3], seed=2)
    report = materialize_day(config(workdir, day(1), fold_from=day(0)))
    pool = read_pool(workdir.pool(MODEL, ENTITY, day(1)))
    ids = pool[KEY].to_pylist()
    assert sorted(ids) == [1, 2, 3]
    vectors = embedding_matrix(pool["embedding"], DIM)
    np.testing.assert_allclose(vectors[ids.index(1)], e0[0], rtol=1e-6)
    np.testing.assert_allclose(vectors[ids.index(2)], e1[0], rtol=1e-6)  # the latest wins
    assert not workdir.pool(MODEL, ENTITY, day(0)).exists()
    assert not offline_day_path(workdir.offline(MODEL, ENTITY), day(0)).exists()
    offline = pq.read_table(offline_day_path(workdir.offline(MODEL, ENTITY), day(1))).sort_by(KEY)
    assert offline[KEY].to_pylist() == [1, 2, 3]
    assert report.metrics["new"] == 3
    with pytest.raises(ValueError, match="fold_from"):
        config(workdir, day(0), fold_from=day(1))


def test_order_rules_gap_and_older_day(workdir):
    for n in (0, 1, 3):
        add_day(workdir, day(n), [1, 2], seed=n)
    materialize_day(config(workdir, day(0)))
    materialize_day(config(workdir, day(1)))
    with pytest.raises(MaterializeError, match="gap.*--allow-gap"):
        materialize_day(config(workdir, day(3)))
    assert not workdir.pool(MODEL, ENTITY, day(3)).exists()
    materialize_day(config(workdir, day(3), allow_gap=True))
    with pytest.raises(MaterializeError, match="older than the newest pool"):
        materialize_day(config(workdir, day(1)))


def test_bad_input_names_file_and_count_and_writes_nothing(workdir):
    e = unit_rows(np.random.default_rng(0), 4)
    e[1, 0] = np.nan
    e[2] = 0.0
    write_daily(workdir, MODEL, ENTITY, day(0), daily_table([1, 2, 3, 4], e, day(0)), "bad")
    wrong_dim = daily_table([5], unit_rows(np.random.default_rng(1), 1, DIM + 1), day(0))
    write_daily(workdir, MODEL, ENTITY, day(0), wrong_dim, "wrongdim")
    missing = daily_table([6], e[:1], day(0)).drop_columns(["ts"])
    write_daily(workdir, MODEL, ENTITY, day(0), missing, "missing")
    with pytest.raises(MaterializeError) as info:
        materialize_day(config(workdir, day(0)))
    message = str(info.value)
    assert "bad.parquet: 1 row(s) with NaN or inf" in message
    assert "bad.parquet: 1 row(s) with a zero-norm" in message
    assert "wrongdim.parquet: 1 row(s) whose embedding length is not D=8" in message
    assert "missing.parquet: missing column(s) ['ts']" in message
    assert not workdir.pool_dir(MODEL, ENTITY).exists()
    assert not list(workdir.offline(MODEL, ENTITY).glob("*.parquet"))


def test_incompatible_model_version_refused_unless_reset(workdir):
    add_day(workdir, day(0), [1, 2], seed=0)
    add_day(workdir, day(1), [2, 3], seed=1, version="ctr-ffffffff-d8@2024-03-02")
    materialize_day(config(workdir, day(0)))
    with pytest.raises(MaterializeError, match="incompatible.*--reset-on-new-model"):
        materialize_day(config(workdir, day(1)))
    report = materialize_day(config(workdir, day(1), reset_on_new_model=True))
    assert report.reset
    pool = read_pool(workdir.pool(MODEL, ENTITY, day(1)))
    assert sorted(pool[KEY].to_pylist()) == [2, 3]
    assert set(pool["model_version"].to_pylist()) == {"ctr-ffffffff-d8@2024-03-02"}
    assert report.metrics["new"] == 2 and report.metrics["expired"] == 2


_CRASH_SCRIPT = """
import datetime as dt, os, sys, time
import materialize.storage as storage
from derm_features.core.workdir import Workdir
from materialize.job import MaterializeConfig, materialize_offline
real = storage.write_pool_bucket
def slow(*args):
    real(*args)
    open(sys.argv[2], "w").close()
    time.sleep(60)
import materialize.engines.local as engine_local
engine_local.write_pool_bucket = slow
materialize_offline(MaterializeConfig(workdir=Workdir.resolve(sys.argv[1]), model="ctr",
    entity="user", day=dt.date(2024, 3, 2), online=False, buckets=3))
"""


def test_killed_mid_run_leaves_readable_state_and_rerun_completes(workdir, tmp_path):
    add_day(workdir, day(0), [1, 2, 3], seed=0)
    add_day(workdir, day(1), [3, 4], seed=1)
    materialize_day(config(workdir, day(0)))
    pool0 = tree_bytes(workdir.pool(MODEL, ENTITY, day(0)))
    marker = tmp_path / "mid-write"
    # A real process, killed with SIGKILL while it is writing pool(t).
    proc = subprocess.Popen([sys.executable, "-c", _CRASH_SCRIPT, str(workdir.root), str(marker)])
    for _ in range(600):
        if marker.exists() or proc.poll() is not None:
            break
        time.sleep(0.1)
    assert marker.exists(), "the child never reached the pool write"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    staging = workdir.staging(MODEL, ENTITY)
    assert list(staging.glob(".tmp-*"))  # the day's spill files, left by the crash
    assert not workdir.pool(MODEL, ENTITY, day(1)).exists()
    assert tree_bytes(workdir.pool(MODEL, ENTITY, day(0))) == pool0
    assert pq.read_table(workdir.offline(MODEL, ENTITY)).num_rows == 3  # readable, day 0 only
    materialize_day(config(workdir, day(1)))
    assert sorted(read_pool(workdir.pool(MODEL, ENTITY, day(1)))[KEY].to_pylist()) == [1, 2, 3, 4]
    assert not list(workdir.pool_dir(MODEL, ENTITY).glob(".tmp-*"))
    assert not list(staging.iterdir())  # the re-run removed the crash's scratch, then its own


def test_offline_timestamp_and_ttl_agree_with_feast(applied_workdir):
    """Entity 1 last seen on day 0 and carried: Feast serves it for events through day 91
    (pool of day 90, exactly 90 days old) and not on day 92, like the kernel's pool.
    Feast's ttl bound is inclusive, so only (day 92) 00:00:00 exactly still sees it."""
    from derm_features.feast.repo import feature_store

    wd = applied_workdir
    e = add_day(wd, day(0), [1], seed=0)
    materialize_day(config(wd, day(0)))
    add_day(wd, day(90), [2], seed=1)
    materialize_day(config(wd, day(90), allow_gap=True))
    assert 1 in read_pool(wd.pool(MODEL, ENTITY, day(90)))[KEY].to_pylist()
    add_day(wd, day(91), [2], seed=2)
    materialize_day(config(wd, day(91)))
    assert 1 not in read_pool(wd.pool(MODEL, ENTITY, day(91)))[KEY].to_pylist()

    def at(moment: dt.datetime):
        return moment.replace(tzinfo=dt.UTC)

    midnight = dt.datetime.combine(day(0), dt.time())
    events = {
        "day 0, last microsecond": at(midnight + dt.timedelta(days=1, microseconds=-1)),
        "day 1, midnight": at(midnight + dt.timedelta(days=1)),
        "day 91, last microsecond": at(midnight + dt.timedelta(days=92, microseconds=-1)),
        "day 92, after midnight": at(midnight + dt.timedelta(days=92, seconds=1)),
    }
    entity_df = pd.DataFrame({KEY: [1] * len(events), "event_timestamp": list(events.values())})
    store = feature_store(wd)
    got = store.get_historical_features(
        entity_df=entity_df, features=["ctr_user_embedding:ctr_user_embedding"]
    ).to_df()
    seen = {
        name: got.loc[got["event_timestamp"] == ts, "ctr_user_embedding"].iloc[0]
        for name, ts in events.items()
    }
    assert seen["day 0, last microsecond"] is None
    np.testing.assert_allclose(np.asarray(seen["day 1, midnight"]), e[0], rtol=1e-6)
    np.testing.assert_allclose(np.asarray(seen["day 91, last microsecond"]), e[0], rtol=1e-6)
    assert seen["day 92, after midnight"] is None


def test_online_push_remove_and_replay_after_redis_down(applied_workdir, monkeypatch):
    from derm_features.core.spec import DermSpec
    from derm_features.feast.repo import apply, feature_store

    # A spec whose TTL is 0 days (one TTL for the pool and the views), so day 1 expires
    # day 0's entities.
    wd = dataclasses.replace(applied_workdir, spec=DermSpec(ttl_days=0))
    apply(wd, quiet=True)
    e0 = add_day(wd, day(0), [1, 2], seed=0)
    materialize_day(config(wd, day(0), online=True))
    store = feature_store(wd)

    def online(ids):
        return store.get_online_features(
            features=["ctr_user_embedding:ctr_user_embedding"], entity_rows=[{KEY: i} for i in ids]
        ).to_dict()["ctr_user_embedding"]

    np.testing.assert_allclose(np.asarray(online([1])[0]), e0[0], rtol=1e-6)

    # Day 1 with Redis unreachable: offline completes, online fails loudly.
    add_day(wd, day(1), [2], seed=1)
    good_url = os.environ["REDIS_URL"]
    monkeypatch.setenv("REDIS_URL", "redis://127.0.0.1:1/15")
    with pytest.raises(OnlineError, match="--online-only"):
        materialize_day(config(wd, day(1), online=True))
    assert workdir_has_day(wd, day(1))
    monkeypatch.setenv("REDIS_URL", good_url)
    report = push_online(config(wd, day(1)))
    assert (report.pushed, report.removed) == (1, 1)  # entity 1 expired with ttl 0
    values = online([1, 2])
    assert values[0] is None
    pool = read_pool(wd.pool(MODEL, ENTITY, day(1)))
    np.testing.assert_allclose(
        np.asarray(values[1]), embedding_matrix(pool["embedding"], DIM)[0], rtol=1e-6
    )


def workdir_has_day(wd, d) -> bool:
    return (
        wd.pool(MODEL, ENTITY, d).is_dir()
        and offline_day_path(wd.offline(MODEL, ENTITY), d).is_file()
    )


def _materialize_cli(workdir, date: str) -> subprocess.CompletedProcess:
    """`derm materialize` of MODEL/ENTITY for `date`, offline only, in a real process."""
    return subprocess.run(
        [DERM, "materialize", "--workdir", str(workdir.root), "--model", MODEL,
         "--entity", ENTITY, "--date", date, "--no-online"],
        capture_output=True,
        text=True,
    )  # fmt: skip


def test_cli_materializes_and_prints_health(workdir):
    add_day(workdir, day(0), [1, 2, 3], seed=0)
    result = _materialize_cli(workdir, str(day(0)))
    assert result.returncode == 0, result.stderr
    assert "live 3" in result.stdout and "new 3" in result.stdout
    bad = _materialize_cli(workdir, "2024-02-01")
    assert bad.returncode == 2 and "older than the newest pool" in bad.stderr


def test_cli_refuses_a_missing_workdir_and_writes_nothing(tmp_path):
    """A mistyped --workdir is named, exit 2, and not created (not even its lock file)."""
    missing = Workdir(tmp_path / "wrok")
    result = _materialize_cli(missing, str(day(0)))
    assert result.returncode == 2 and "--workdir" in result.stderr
    assert "no such work directory" in result.stderr
    assert not missing.root.exists()


# ---------------------------------------------------------------- issue 13: faults


def _basis(k: int, sign: float = 1.0) -> np.ndarray:
    v = np.zeros((1, DIM), np.float32)
    v[0, k] = sign
    return v


def test_zero_row_daily_file_is_a_carry_over_only_day(workdir):
    e = add_day(workdir, day(0), [1, 2, 3], seed=0)
    materialize_day(config(workdir, day(0)))
    empty = daily_table([], np.zeros((0, DIM), np.float32), day(1))
    write_daily(workdir, MODEL, ENTITY, day(1), empty)
    report = materialize_day(config(workdir, day(1)))
    m = report.metrics
    assert (m["live"], m["new"], m["updated"], m["carried"], m["expired"]) == (3, 0, 0, 3, 0)
    pool = read_pool(workdir.pool(MODEL, ENTITY, day(1))).sort_by(KEY)
    assert pool.equals(read_pool(workdir.pool(MODEL, ENTITY, day(0))).sort_by(KEY))  # carried
    np.testing.assert_allclose(embedding_matrix(pool["embedding"], DIM), e, rtol=1e-6)
    assert {t.date() for t in pool["last_seen"].to_pylist()} == {day(0)}  # not re-stamped
    assert pq.read_table(offline_day_path(workdir.offline(MODEL, ENTITY), day(1))).num_rows == 0
    # The TTL still applies on such a day: 91 days after day 0 everything expires.
    write_daily(workdir, MODEL, ENTITY, day(92), empty)
    late = materialize_day(config(workdir, day(92), allow_gap=True)).metrics
    assert (late["live"], late["expired"]) == (0, 3)


def test_zero_row_first_day_is_refused_with_a_message(workdir):
    write_daily(workdir, MODEL, ENTITY, day(0), daily_table([], np.zeros((0, DIM)), day(0)))
    with pytest.raises(MaterializeError, match="have no rows and there is no earlier pool"):
        materialize_day(config(workdir, day(0)))


def test_cancelling_day_publishes_the_previous_value_everywhere(applied_workdir):
    """ma w=0.5 over e_0 then -e_0: E(t) = 0. Offline rows, Redis and the pool keep e_0
    (never a zero vector served as found); health counts the entity as degenerate."""
    from derm_features.feast.repo import feature_store

    wd = applied_workdir
    for n, vectors in enumerate([[_basis(0), _basis(1)], [_basis(0, -1), _basis(2)]]):
        write_daily(wd, MODEL, ENTITY, day(n), daily_table([1, 2], np.vstack(vectors), day(n)))
    materialize_day(config(wd, day(0), online=True, w=0.5))
    report = materialize_day(config(wd, day(1), online=True, w=0.5))
    assert report.metrics["degenerate"] == 1 and report.metrics["norm_min"] == 0.0
    offline = pq.read_table(offline_day_path(wd.offline(MODEL, ENTITY), day(1))).sort_by(KEY)
    np.testing.assert_array_equal(embedding_matrix(offline["embedding"], DIM)[0], _basis(0)[0])
    e2 = (0.5 * _basis(1) + 0.5 * _basis(2))[0]
    np.testing.assert_allclose(
        embedding_matrix(offline["embedding"], DIM)[1], e2 / np.linalg.norm(e2), rtol=1e-6
    )
    online = (
        feature_store(wd)
        .get_online_features(
            features=["ctr_user_embedding:ctr_user_embedding"], entity_rows=[{KEY: 1}]
        )
        .to_dict()["ctr_user_embedding"][0]
    )
    np.testing.assert_array_equal(np.asarray(online, np.float32), _basis(0)[0])
    row = health.read_health(wd.metrics).to_pylist()[-1]
    assert row["day"] == day(1) and row["degenerate"] == 1
    assert "degenerate 1 (kept their previous value)" in health.format_metrics(report.metrics)


def test_huge_daily_norms_publish_unit_vectors(workdir):
    e = unit_rows(np.random.default_rng(3), 2) * np.float32(1e30)
    write_daily(workdir, MODEL, ENTITY, day(0), daily_table([1, 2], e, day(0)))
    report = materialize_day(config(workdir, day(0)))
    offline = pq.read_table(offline_day_path(workdir.offline(MODEL, ENTITY), day(0))).sort_by(KEY)
    published = embedding_matrix(offline["embedding"], DIM).astype(np.float64)
    np.testing.assert_allclose(np.linalg.norm(published, axis=1), 1.0, rtol=1e-6)
    direction = e / np.linalg.norm(e.astype(np.float64), axis=1)[:, None]
    np.testing.assert_allclose(published, direction, rtol=1e-5)
    assert report.metrics["norm_max"] == pytest.approx(1e30, rel=1e-6)
    assert report.metrics["degenerate"] == 0


def test_validation_names_file_column_and_first_bad_row(workdir):
    """Values outside float32 (the pool's type) and NaN are refused by file, column and
    the first bad row; norms are float64, so x1e30 vectors pass."""
    values = unit_rows(np.random.default_rng(4), 4).astype(np.float64)
    values[1, 3] = np.nan
    values[2, 0] = 1e39  # finite in float64, inf once stored as float32
    values[3] *= 1e30
    flat = pa.array(values.reshape(-1))
    table = daily_table([1, 2, 3, 4], np.zeros((4, DIM), np.float32), day(0)).set_column(
        2, "embedding", pa.FixedSizeListArray.from_arrays(flat, DIM)
    )
    write_daily(workdir, MODEL, ENTITY, day(0), table, "wide")
    with pytest.raises(MaterializeError) as info:
        materialize_day(config(workdir, day(0)))
    message = str(info.value)
    assert "wide.parquet: 1 row(s) with NaN or inf in column 'embedding' (first: row 1)" in message
    assert (
        "wide.parquet: 1 row(s) with values beyond float32's range in column 'embedding' "
        "(first: row 2)"
    ) in message
    assert "row 3" not in message
