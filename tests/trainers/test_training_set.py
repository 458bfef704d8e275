"""Training sets from Feast: the point-in-time rule, missing embeddings, bad input.

Offline rows are written by hand in the materializer's format (`write_offline`), so these
tests pin the contract between the two sides: `<entity>_id`, `event_timestamp` (end of the
day the value includes), `embedding`, `last_seen`, `model_version`.
"""

from __future__ import annotations

import datetime as dt

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from derm_features.core.workdir import Workdir
from trainers.downstream.training_set import (
    TrainingSetConfig,
    TrainingSetError,
    build_training_set,
    embedding_matrix,
    parse_embeddings,
)

UTC = pa.timestamp("us", tz="UTC")
D = 4


def end_of_day(day: dt.date, convention: str) -> dt.datetime:
    """The stamp of a value that includes `day`: the last microsecond of it, or midnight after."""
    midnight_after = dt.datetime.combine(day + dt.timedelta(days=1), dt.time(), tzinfo=dt.UTC)
    return (
        midnight_after - dt.timedelta(microseconds=1) if convention == "last_us" else midnight_after
    )


def write_offline(
    workdir: Workdir,
    model: str,
    entity: str,
    rows: list[tuple[int, dt.date, list[float] | None]],
    convention: str = "last_us",
    tag: str = "0",
) -> list[tuple[int, dt.datetime, list[float] | None]]:
    """Offline-source rows in the materializer's format: (entity id, day included, vector;
    None: a tombstone), one `part-<tag>.parquet` per day. Returns (id, stamp, vector) rows."""
    written, by_day = [], {}
    for row in rows:
        by_day.setdefault(row[1], []).append(row)
    for day, day_rows in by_day.items():
        stamp = end_of_day(day, convention)
        dim = next((len(r[2]) for r in day_rows if r[2] is not None), D)
        table = pa.table(
            {
                f"{entity}_id": pa.array([r[0] for r in day_rows], pa.int64()),
                "event_timestamp": pa.array([stamp] * len(day_rows), UTC),
                "embedding": pa.array([r[2] for r in day_rows], pa.list_(pa.float32())),
                "last_seen": pa.array([stamp] * len(day_rows), UTC),
                "model_version": pa.array([f"{model}-0123abcd-d{dim}@{day}"] * len(day_rows)),
            }
        )
        directory = workdir.offline(model, entity) / f"ds={day.isoformat()}"
        directory.mkdir(parents=True, exist_ok=True)
        pq.write_table(table, directory / f"part-{tag}.parquet")
        written += [(r[0], stamp, r[2]) for r in day_rows]
    return written


def write_log(path, events: list[tuple[int, int, dt.datetime]]) -> None:
    """A minimal log that follows the contract: one row per (user, pin, ts)."""
    n = len(events)
    table = pa.table(
        {
            "user_id": pa.array([e[0] for e in events], pa.int64()),
            "pin_id": pa.array([e[1] for e in events], pa.int64()),
            "ts": pa.array([e[2] for e in events], UTC),
            "click": pa.array([i % 2 for i in range(n)], pa.int8()),
            "conversion": pa.array([0] * n, pa.int8()),
            "user_age_bucket": pa.array([3] * n, pa.int8()),
            "ctx_hour": pa.array([e[2].hour for e in events], pa.int8()),
        }
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(table, path)


def at(day: dt.date, hour: int, minute: int = 0, micro: int = 0) -> dt.datetime:
    return dt.datetime.combine(day, dt.time(hour, minute, 0, micro), tzinfo=dt.UTC)


def vec(x: float) -> list[float]:
    return [x] * D


@pytest.mark.parametrize("backend", ["duckdb", "feast"])
@pytest.mark.parametrize("convention", ["last_us", "midnight_after"])
def test_point_in_time_rule_is_adversarially_correct(
    applied_workdir, tmp_path, convention, backend
):
    """User 1's embedding changes on day t. Events on day t must see day t-1's value (even
    one microsecond before the new stamp), events on day t+1 see day t's; on day t+92 the
    value has expired (the pool keeps an entity 90 days; Feast's ttl is set to match) and
    becomes zeros with has_ = 0, while on day t+90 it is still served."""
    t = dt.date(2024, 3, 10)
    day = dt.timedelta(days=1)
    write_offline(
        applied_workdir, "cvr", "user", [(1, t - day, vec(1.0)), (1, t, vec(2.0))], convention
    )
    write_offline(applied_workdir, "ctr", "pin", [(7, t - day, vec(5.0))], convention)
    events = [
        (1, 7, at(t, 0)),  # first instant of day t
        (1, 7, at(t, 23, 59, 999_999)),  # last instant of day t: still day t-1's value
        (1, 7, at(t + day, 0)),  # day t+1: day t's value
        (2, 7, at(t, 12)),  # user 2 never had an embedding
        (1, 8, at(t + 90 * day, 12)),  # 89 days after t's stamp: still live
        (1, 8, at(t + 91 * day, 23, 59)),  # day t+91: the pool of day t+90 still holds it
        (1, 8, at(t + 92 * day, 0)),  # the first instant of day t+92: expired
        (1, 7, at(t - day, 12)),  # day t-1 itself: nothing before it
    ]
    log = tmp_path / "log.parquet"
    write_log(log, events)
    cfg = TrainingSetConfig(
        logs=log,
        workdir=applied_workdir.root,
        start=t - day,
        end=t + 92 * day,
        embeddings=("ctr_pin", "cvr_user"),
    )
    # derm's ASOF join and Feast's get_historical_features, against the same values
    table = build_training_set(cfg, backend=backend).read().sort_by("ts")
    got = {
        (r["user_id"], r["pin_id"], r["ts"]): r
        for r in table.select(
            ["user_id", "pin_id", "ts", "cvr_user_embedding", "has_cvr_user_embedding",
             "ctr_pin_embedding", "has_ctr_pin_embedding"]
        ).to_pylist()
    }  # fmt: skip
    assert len(got) == len(events)

    def user_vec(e):
        r = got[(e[0], e[1], e[2])]
        return r["cvr_user_embedding"][0], r["has_cvr_user_embedding"]

    assert user_vec(events[0]) == (1.0, 1)
    assert user_vec(events[1]) == (1.0, 1)
    assert user_vec(events[2]) == (2.0, 1)
    assert user_vec(events[3]) == (0.0, 0)
    assert user_vec(events[4]) == (2.0, 1)
    assert user_vec(events[5]) == (2.0, 1)
    assert user_vec(events[6]) == (0.0, 0)
    assert user_vec(events[7]) == (0.0, 0)
    # the Pin side follows the same rule; Pin 8 never had a value
    pin = {e[1:]: got[e]["has_ctr_pin_embedding"] for e in got}
    assert pin[(7, at(t, 0))] == 1 and pin[(7, at(t - day, 12))] == 0
    assert pin[(8, at(t + 90 * day, 12))] == 0
    assert got[events[0]]["ctr_pin_embedding"] == vec(5.0)
    # the log's own columns pass through unchanged
    by_ts = sorted(events, key=lambda e: e[2])
    assert table.column("ctx_hour").to_pylist() == [e[2].hour for e in by_ts]
    assert table.column("click").to_pylist() == [events.index(e) % 2 for e in by_ts]


@pytest.mark.parametrize("backend", ["duckdb", "feast"])
def test_a_tombstone_hides_the_older_value(applied_workdir, tmp_path, backend):
    """A model switch leaves a null offline row for an abandoned entity: events after it see
    no embedding (the older value is hidden, as in Feast), events before it still see the
    older one; an entity updated instead sees its newest value."""
    t, day = dt.date(2024, 3, 10), dt.timedelta(days=1)
    write_offline(
        applied_workdir,
        "ctr",
        "user",
        [(1, t - 2 * day, vec(1.0)), (2, t - 2 * day, vec(3.0)), (1, t - day, None),
         (2, t - day, vec(4.0))],
    )  # fmt: skip
    log = tmp_path / "log.parquet"
    write_log(log, [(1, 7, at(t - day, 5)), (1, 7, at(t, 5)), (2, 7, at(t, 6))])
    cfg = TrainingSetConfig(log, applied_workdir.root, t - day, t, embeddings=("ctr_user",))
    table = build_training_set(cfg, backend=backend).read().sort_by("ts")
    assert table.column("has_ctr_user_embedding").to_pylist() == [1, 0, 1]
    assert [v[0] for v in table.column("ctr_user_embedding").to_pylist()] == [1.0, 0.0, 4.0]


@pytest.mark.parametrize("backend", ["duckdb", "feast"])
def test_a_value_stamped_exactly_ttl_before_the_cut_is_still_seen(
    applied_workdir, tmp_path, backend
):
    """Feast's ttl is inclusive: a value stamped exactly ttl before an event's cut is served,
    one stamped a microsecond earlier is not, also when that event is the log's only one
    (derm's join reads only the offline rows stamped in [first cut - ttl, last cut])."""
    from trainers.downstream.training_set import lookup_time

    t = dt.date(2024, 6, 1)
    cut = lookup_time(t)
    ttl = applied_workdir.spec.feast_ttl
    for user, stamp in ((1, cut - ttl), (2, cut - ttl - dt.timedelta(microseconds=1))):
        table = pa.table(
            {
                "user_id": pa.array([user], pa.int64()),
                "event_timestamp": pa.array([stamp], UTC),
                "embedding": pa.array([vec(float(user))], pa.list_(pa.float32())),
                "last_seen": pa.array([stamp], UTC),
                "model_version": pa.array([f"ctr-0123abcd-d{D}@{stamp.date()}"]),
            }
        )
        directory = applied_workdir.offline("ctr", "user") / f"ds={stamp.date()}-{user}"
        directory.mkdir(parents=True)
        pq.write_table(table, directory / "part-0.parquet")
    log = tmp_path / "log.parquet"
    write_log(log, [(1, 7, at(t, 9)), (2, 7, at(t, 10))])
    cfg = TrainingSetConfig(log, applied_workdir.root, t, t, embeddings=("ctr_user",))
    table = build_training_set(cfg, backend=backend).read().sort_by("ts")
    assert table.column("has_ctr_user_embedding").to_pylist() == [1, 0]


@pytest.mark.parametrize(("file_format", "batch_rows"), [("parquet", 65_536), ("arrow", 7)])
def test_rows_keep_their_labels_and_features_after_feast_reorders(
    applied_workdir, tmp_path, file_format, batch_rows
):
    """Many users on one day: every row's embedding must be its own user's and its Pin's
    (Feast's DuckDB store returns rows in its own order; the builder re-keys them), also
    when a day is gathered and written in batches of `batch_rows` rows."""
    t = dt.date(2024, 5, 2)
    users = list(range(100, 160))
    write_offline(
        applied_workdir,
        "ctr",
        "user",
        [(u, t - dt.timedelta(days=1), vec(float(u))) for u in users],
    )
    write_offline(
        applied_workdir, "ctr", "pin", [(p, t - dt.timedelta(days=1), vec(-p)) for p in (1, 3)]
    )
    events = [(u, u % 5, at(t, u % 24)) for u in reversed(users)] + [(999, 1, at(t, 3))]
    day_dir = tmp_path / "logs" / "ds=2024-05-02"
    write_log(day_dir / "part-0.parquet", events[:30])  # two files: a batch spans both
    write_log(day_dir / "part-1.parquet", events[30:])
    cfg = TrainingSetConfig(
        logs=day_dir.parent, workdir=applied_workdir.root, start=t, end=t,
        embeddings=("ctr_user", "ctr_pin"), file_format=file_format, batch_rows=batch_rows,
    )  # fmt: skip
    shown = []
    built = build_training_set(cfg, progress=lambda days: (shown.append(d) or d for d in days))
    assert shown == [t]  # the progress callable sees the days themselves
    table = built.read()
    assert table.num_rows == len(events)
    user = table.column("user_id").to_numpy()
    emb = np.stack(table.column("ctr_user_embedding").to_numpy(zero_copy_only=False))
    has = table.column("has_ctr_user_embedding").to_numpy()
    known = user != 999
    np.testing.assert_array_equal(emb[known, 0], user[known].astype(np.float32))
    assert has[known].all() and not has[~known].any()
    assert (emb[~known] == 0).all()
    assert table.schema.field("ctr_user_embedding").type == pa.list_(pa.float32(), D)
    pin = table.column("pin_id").to_numpy()
    pin_emb = np.stack(table.column("ctr_pin_embedding").to_numpy(zero_copy_only=False))
    found = np.isin(pin, (1, 3))
    np.testing.assert_array_equal(pin_emb[found, 0], -pin[found].astype(np.float32))
    assert (pin_emb[~found] == 0).all()
    assert (table.column("has_ctr_pin_embedding").to_numpy() == found).all()
    batches = [b.num_rows for b in built.dataset().to_batches(columns=["user_id"])]
    assert batches == ([61] if batch_rows > 61 else [7] * 8 + [5])


def test_an_arrow_set_holds_the_same_rows_as_a_parquet_one(applied_workdir, tmp_path):
    """file_format="arrow" writes Arrow IPC files (memory-mapped on read) with the same
    columns, types and rows as the Parquet set; the format is recorded in meta.json and
    `dataset()` (what the downstream encoder reads in batches) reads either."""
    t = dt.date(2024, 5, 2)
    write_offline(
        applied_workdir, "ctr", "user", [(u, t - dt.timedelta(days=1), vec(u)) for u in (1, 2)]
    )
    log = tmp_path / "logs"
    for day in (t, t + dt.timedelta(days=1)):
        write_log(log / f"ds={day}" / "part.parquet", [(1, 5, at(day, 1)), (3, 6, at(day, 2))])
    shown = []
    sets = {
        fmt: build_training_set(
            TrainingSetConfig(
                log,
                applied_workdir.root,
                t,
                t + dt.timedelta(days=1),
                ("ctr_user",),
                name=fmt,
                file_format=fmt,
                days_per_fetch=days_per_fetch,  # the arrow set: one join per day
            ),
            progress=lambda days: (shown.append(d) or d for d in days),
        )
        for fmt, days_per_fetch in (("parquet", 7), ("arrow", 1))
    }
    assert shown == [t, t + dt.timedelta(days=1)] * 2
    assert [p.suffix for p in sets["arrow"].files()] == [".arrow", ".arrow"]
    assert sets["arrow"].meta["format"] == "arrow" and sets["parquet"].file_format == "parquet"
    parquet, arrow = (sets[f].read() for f in ("parquet", "arrow"))
    assert arrow.num_rows == 4 and arrow.equals(parquet)
    assert arrow.column("has_ctr_user_embedding").to_pylist() == [1, 0, 1, 0]
    batches = sets["arrow"].dataset().to_batches(columns=["ctr_user_embedding"], batch_size=3)
    assert [b.num_rows for b in batches] == [2, 2]  # one record batch per day file
    with pytest.raises(TrainingSetError, match="format must be one of parquet, arrow.*'csv'"):
        TrainingSetConfig(log, applied_workdir.root, t, t, ("ctr_user",), file_format="csv")
    with pytest.raises(TrainingSetError, match="batch_rows must be at least 1, got 0"):
        TrainingSetConfig(log, applied_workdir.root, t, t, ("ctr_user",), batch_rows=0)


def test_no_embeddings_needs_no_feast(workdir, tmp_path):
    t = dt.date(2024, 1, 5)
    log = tmp_path / "log.parquet"
    write_log(log, [(1, 2, at(t, 1)), (3, 4, at(t, 2))])
    ts = build_training_set(TrainingSetConfig(log, workdir.root, t, t, embeddings=()))
    assert ts.read().num_rows == 2 and ts.embeddings == ()


def test_missing_view_data_is_a_clear_error(workdir, tmp_path):
    t = dt.date(2024, 1, 5)
    log = tmp_path / "log.parquet"
    write_log(log, [(1, 2, at(t, 1))])
    with pytest.raises(TrainingSetError, match="cvr_pin_embedding.*derm materialize"):
        build_training_set(TrainingSetConfig(log, workdir.root, t, t, embeddings=("cvr_pin",)))


def test_parse_embeddings_names_the_flag():
    assert parse_embeddings("none") == ()
    assert parse_embeddings("cvr_pin, ctr_user") == ("ctr_user", "cvr_pin")
    with pytest.raises(TrainingSetError, match="--embeddings.*ctr_item"):
        parse_embeddings("ctr_item")


def test_embedding_matrix_zero_fills_and_checks_length():
    arr = pa.array([[1.0, 2.0], None, [3.0, 4.0]], pa.list_(pa.float32()))
    matrix, present = embedding_matrix(arr, 2, "x")
    np.testing.assert_array_equal(matrix, [[1, 2], [0, 0], [3, 4]])
    np.testing.assert_array_equal(present, [True, False, True])
    with pytest.raises(TrainingSetError, match="column 'x'.*length 2, expected 3"):
        embedding_matrix(arr, 3, "x")
    # fixed-size lists (what the ASOF join returns): the same, a sliced array included
    fixed = pa.array([[9.0, 9.0], [1.0, 2.0], None, [3.0, 4.0]], pa.list_(pa.float32(), 2))
    matrix, present = embedding_matrix(fixed.slice(1), 2, "x")
    np.testing.assert_array_equal(matrix, [[1, 2], [0, 0], [3, 4]])
    np.testing.assert_array_equal(present, [True, False, True])


@pytest.mark.spark
def test_spark_offline_store_gives_the_same_rows_as_duckdb(
    applied_workdir, tmp_path, spark, monkeypatch, repo_root
):
    """The same builder on Feast's Spark offline store, chosen by configuration alone."""
    from dataclasses import replace

    from derm_features.feast.repo import apply

    t = dt.date(2024, 3, 10)
    day = dt.timedelta(days=1)
    write_offline(applied_workdir, "cvr", "user", [(1, t - day, vec(1.0)), (1, t, vec(2.0))])
    write_offline(applied_workdir, "ctr", "pin", [(7, t - day, vec(5.0)), (8, t, vec(6.0))])
    events = [(1, 7, at(t, 0)), (1, 8, at(t + day, 5)), (2, 7, at(t, 12)), (1, 7, at(t - day, 1))]
    log = tmp_path / "log.parquet"
    write_log(log, events)
    cfg = TrainingSetConfig(log, applied_workdir.root, t - day, t + day, ("ctr_pin", "cvr_user"))
    duck = build_training_set(cfg).read().sort_by([("ts", "ascending"), ("pin_id", "ascending")])

    monkeypatch.setenv("DERM_OFFLINE_STORE", "spark")
    monkeypatch.setenv("FEAST_FS_YAML_FILE_PATH", str(repo_root / "feature_store.spark.yaml"))
    apply(applied_workdir, quiet=True)
    from derm_features.feast.repo import feature_store

    store = feature_store(applied_workdir)
    assert type(store.config.offline_store).__name__ == "SparkOfflineStoreConfig"
    spark_set = build_training_set(replace(cfg, name="on-spark"), store=store).read()
    spark_set = spark_set.sort_by([("ts", "ascending"), ("pin_id", "ascending")])
    assert spark_set.num_rows == len(events)
    assert spark_set.equals(duck)
    assert duck.column("has_cvr_user_embedding").to_pylist() == [0, 1, 0, 1]


def test_point_in_time_embeddings_for_an_owners_entity_dataframe(applied_workdir):
    """The model owner's API: rows in any order, naive (= UTC) or aware times, string ids
    hashed as the trainer hashes them; dense matrices in the rows' order, plus found flags."""
    import pandas as pd

    from derm_features.core.ids import hash_ids_to_int64
    from trainers.downstream.training_set import point_in_time_embeddings

    t, day = dt.date(2024, 3, 10), dt.timedelta(days=1)
    alice = int(hash_ids_to_int64(pa.array(["alice"]))[0])
    write_offline(
        applied_workdir,
        "cvr",
        "user",
        [(alice, t - day, vec(1.0)), (alice, t, vec(2.0)), (3, t - day, vec(3.0))],
        "midnight_after",
    )
    write_offline(applied_workdir, "ctr", "pin", [(7, t - day, vec(5.0))], "midnight_after")
    rows = pd.DataFrame(
        {
            "user_id": ["alice", "bob", "alice", "alice"],
            "pin_id": [7, 7, 8, 7],
            "event_timestamp": [
                at(t + day, 0),  # day t+1: day t's value
                at(t, 12),  # bob: never had one
                at(t, 23, 59, 999_999),  # the last instant of day t: day t-1's value
                at(t - day, 12),  # day t-1: nothing before it
            ],
        }
    )
    got = point_in_time_embeddings(rows, ["cvr_user", "ctr_pin"], applied_workdir)
    assert got.vectors["cvr_user"][:, 0].tolist() == [2.0, 0.0, 1.0, 0.0]
    assert got.present["cvr_user"].tolist() == [True, False, True, False]
    assert got.vectors["ctr_pin"].shape == (4, D)
    assert got.present["ctr_pin"].tolist() == [True, True, False, False]
    naive = rows.assign(event_timestamp=[ts.replace(tzinfo=None) for ts in rows.event_timestamp])
    again = point_in_time_embeddings(naive, ["cvr_user"], applied_workdir)
    assert np.array_equal(again.vectors["cvr_user"], got.vectors["cvr_user"])
    with pytest.raises(TrainingSetError, match="entity_df has no column 'pin_id'"):
        point_in_time_embeddings(rows.drop(columns="pin_id"), ["ctr_pin"], applied_workdir)
    with pytest.raises(TrainingSetError, match="unknown embedding"):
        point_in_time_embeddings(rows, ["ctr_ad"], applied_workdir)


@pytest.mark.parametrize("backend", ["duckdb", "feast"])
def test_an_event_that_would_see_another_d_is_refused_naming_the_view(
    applied_workdir, tmp_path, backend
):
    """After a model switch to another D, an event before the switch would get the old
    D's vector: refused by name on both joins (build training sets on one side of it)."""
    t = dt.date(2024, 3, 10)
    write_offline(applied_workdir, "ctr", "user", [(1, t - dt.timedelta(days=1), [1.0] * 8)])
    write_offline(applied_workdir, "ctr", "user", [(1, t + dt.timedelta(days=1), [2.0] * 4)])
    log = tmp_path / "log.parquet"
    write_log(log, [(1, 7, at(t, 12))])  # sees day t-1's 8-d vector; the view's D is now 4
    cfg = TrainingSetConfig(log, applied_workdir.root, t, t, embeddings=("ctr_user",))
    with pytest.raises(TrainingSetError, match=r"ctr_user_embedding.*length.*4"):
        build_training_set(cfg, backend=backend)


def test_rows_of_finds_pairs_for_rows_in_any_order():
    """`Lookup.rows_of` answers from the pairs' own index when a day's rows come back in
    the order they were paired, and searches when they do not: the same pairs either way."""
    from trainers.downstream.training_set.lookup import Lookup, distinct_pairs

    day = dt.date(2024, 3, 10)
    row_ids = np.array([30, 10, 30, 20, 10], np.int64)
    cuts, ids, known = distinct_pairs({day: row_ids, day + dt.timedelta(days=1): row_ids[:2]})
    assert ids.tolist() == [10, 20, 30, 10, 30]
    lookup = Lookup(cuts, ids, {}, {}, known)
    assert lookup.rows_of(day, row_ids).tolist() == [2, 0, 2, 1, 0]
    shuffled = row_ids[::-1].copy()
    assert lookup.rows_of(day, shuffled).tolist() == [0, 1, 2, 0, 2]
    assert ids[lookup.rows_of(day + dt.timedelta(days=1), np.array([30, 10]))].tolist() == [30, 10]


def test_used_vectors_copies_only_the_rows_asked_for_across_chunks():
    """The ASOF join's vectors: rows picked by number across chunks (a chunk may hold a
    tombstone or an older D's vector, which are never picked), list or fixed-size list."""
    from trainers.downstream.training_set.vectors import used_vectors, vector_lengths

    values = pa.chunked_array(
        [
            pa.array([[1.0, 2.0], None], pa.list_(pa.float32())),
            pa.array([[3.0, 4.0, 5.0], [6.0, 7.0], [8.0, 9.0]], pa.list_(pa.float32())),
        ]
    )
    assert vector_lengths(values).tolist() == [2, -1, 3, 2, 2]
    np.testing.assert_array_equal(used_vectors(values, np.array([0, 4]), 2), [[1, 2], [8, 9]])
    fixed = pa.chunked_array([pa.array([[0, 0], [1, 2], [3, 4]], pa.list_(pa.float32(), 2))[1:]])
    np.testing.assert_array_equal(used_vectors(fixed, np.array([1]), 2), [[3, 4]])
