"""Adversarial checks of training sets written batch by batch (`batch_rows`), with buffers
reused across batches, days and writers, and embeddings fetched per chunk of days.

Oracle: every row's vector and has_ flag are recomputed here from the offline rows as
written (the module docstring's point-in-time rule: the newest value stamped at or before
the day's first microsecond and within the view's ttl; a tombstone hides older values),
and the log's own columns must come back unchanged, in the log's order, day by day.
Every build (batch_rows x days_per_fetch x format x backend) must equal that.
"""

from __future__ import annotations

import datetime as dt
import itertools

import numpy as np
import pyarrow as pa
import pyarrow.ipc as ipc
import pyarrow.parquet as pq
import pytest
from test_training_set import UTC, at, write_offline

from trainers.downstream.training_set import (
    TrainingSetConfig,
    TrainingSetError,
    build_training_set,
    lookup_time,
)
from trainers.downstream.training_set import build as build_module

T0 = dt.date(2024, 5, 1)
DAY = dt.timedelta(days=1)


def log_table(events, extra=None) -> pa.Table:
    n = len(events)
    cols = {
        "user_id": pa.array([e[0] for e in events], pa.int64()),
        "pin_id": pa.array([e[1] for e in events], pa.int64()),
        "ts": pa.array([e[2] for e in events], UTC),
        "click": pa.array([(e[0] + e[1]) % 2 for e in events], pa.int8()),
        "conversion": pa.array([None if i % 3 == 0 else 1 for i in range(n)], pa.int8()),
        "ctx_hour": pa.array([e[2].hour for e in events], pa.int8()),
        "user_recent": pa.array(
            [[e[0], e[1], i] for i, e in enumerate(events)], pa.list_(pa.int64())
        ),
        "pin_content": pa.array(
            [[float(e[1]), float(i)] for i, e in enumerate(events)], pa.list_(pa.float32(), 2)
        ),
    }
    cols.update(extra or {})
    return pa.table(cols)


def oracle(offline, ident, day, ttl):
    cut = lookup_time(day)
    seen = [r for r in offline if r[0] == ident and r[1] <= cut]
    if not seen:
        return None
    stamp, vector = max(((r[1], r[2]) for r in seen), key=lambda r: r[0])
    return None if cut > stamp + ttl else vector


def check_against_oracle(table, expected_rows, offline, dims, ttl):
    """expected_rows: the log rows in output order (a pa.Table)."""
    assert table.num_rows == expected_rows.num_rows
    for name in expected_rows.column_names:
        assert table.column(name).equals(expected_rows.column(name)), name
    users = table.column("user_id").to_pylist()
    pins = table.column("pin_id").to_pylist()
    days = [ts.date() for ts in table.column("ts").to_pylist()]
    stamps = table.column("event_timestamp").to_pylist()
    assert stamps == [lookup_time(d) for d in days]
    for key, rows in offline.items():
        ids = users if key.endswith("_user") else pins
        col = table.column(f"{key}_embedding").to_pylist()
        has = table.column(f"has_{key}_embedding").to_pylist()
        assert table.schema.field(f"{key}_embedding").type == pa.list_(pa.float32(), dims[key])
        for i, (ident, day) in enumerate(zip(ids, days, strict=True)):
            want = oracle(rows, ident, day, ttl)
            if want is None:
                assert has[i] == 0 and col[i] == [0.0] * dims[key], (key, i, ident, day)
            else:
                assert has[i] == 1 and col[i] == pytest.approx(want), (key, i, ident, day, col[i])


def vec(ident, day, dim, scale=1.0):
    """A vector unique to (id, day, component)."""
    base = ident * 1000 + (day - T0).days * 10
    return [scale * (base + c + 0.25) for c in range(dim)]


@pytest.fixture
def scenario(applied_workdir, tmp_path):
    """Days of very different sizes (a big day, then tiny ones, a day of unknown ids only),
    a day split over several files and row groups, a tombstone, an entity expiring
    mid-range, views of D=3, D=1 and D=2, and a view (cvr_pin) whose only rows are stamped
    after every cut."""
    wd = applied_workdir
    ttl = wd.spec.feast_ttl
    offline = {}
    offline["ctr_user"] = write_offline(
        wd, "ctr", "user",
        [(u, T0 - 2 * DAY, vec(u, T0 - 2 * DAY, 3)) for u in (1, 2, 3, 4)]
        + [(1, T0, vec(1, T0, 3)), (2, T0 + DAY, None), (4, T0 + 2 * DAY, vec(4, T0 + 2 * DAY, 3)),
           (5, T0 + 3 * DAY, vec(5, T0 + 3 * DAY, 3))]
        + [(6, T0 - 89 * DAY, vec(6, T0 - 89 * DAY, 3))],  # expires mid-range
        "last_us",
    )  # fmt: skip
    offline["cvr_user"] = write_offline(
        wd, "cvr", "user",
        [(u, T0 - DAY, vec(u, T0 - DAY, 1, -1)) for u in (1, 3, 5)]
        + [(3, T0 + 4 * DAY, vec(3, T0 + 4 * DAY, 1, -1))],
        "midnight_after",
    )  # fmt: skip
    offline["ctr_pin"] = write_offline(
        wd, "ctr", "pin",
        [(p, T0 - DAY, vec(p, T0 - DAY, 2, 0.5)) for p in (10, 11, 12)]
        + [(11, T0 + DAY, vec(11, T0 + DAY, 2, 0.5)), (13, T0 + 3 * DAY, vec(13, T0 + 3 * DAY, 2))],
        "midnight_after",
    )  # fmt: skip
    offline["cvr_pin"] = write_offline(wd, "cvr", "pin", [(10, T0 + 60 * DAY, [7.0, 7.0])])
    dims = {"ctr_user": 3, "cvr_user": 1, "ctr_pin": 2, "cvr_pin": 2}

    rng = np.random.default_rng(7)
    sizes = {0: 11, 1: 1, 2: 9, 3: 2, 5: 1, 6: 4, 8: 3}  # day 4, 7: no rows
    logs = tmp_path / "logs"
    expected = []
    for d, n in sizes.items():
        day = T0 + d * DAY
        if d == 6:  # nobody here has an embedding
            events = [(900 + i, 900 + i, at(day, i)) for i in range(n)]
        else:
            users, pins = rng.integers(1, 8, n), rng.integers(10, 15, n)
            hours = rng.integers(0, 24, n)
            events = [(int(users[i]), int(pins[i]), at(day, int(hours[i]), i)) for i in range(n)]
        table = log_table(events)
        folder = logs / f"ds={day.isoformat()}"
        folder.mkdir(parents=True)
        if d == 2:  # three files; the first has row groups of 2
            pq.write_table(table.slice(0, 5), folder / "part-0.parquet", row_group_size=2)
            pq.write_table(table.slice(5, 1), folder / "part-1.parquet")
            pq.write_table(table.slice(6), folder / "part-2.parquet", row_group_size=1)
        else:
            pq.write_table(table, folder / "part-0.parquet")
        expected.append(table)
    expected = pa.concat_tables(expected)
    return wd, logs, offline, dims, ttl, expected


KEYS = {
    "both": ("ctr_user", "cvr_user", "ctr_pin", "cvr_pin"),
    "users": ("ctr_user", "cvr_user"),
    "pins": ("ctr_pin", "cvr_pin"),
    "d1": ("cvr_user",),
}


def build(wd, logs, keys, name, **kw):
    backend = kw.pop("backend", "duckdb")
    cfg = TrainingSetConfig(
        logs=logs, workdir=wd.root, start=T0 - DAY, end=T0 + 9 * DAY, embeddings=keys,
        name=name, **kw,
    )  # fmt: skip
    return build_training_set(cfg, backend=backend)


@pytest.mark.parametrize("which", list(KEYS))
def test_every_batching_equals_the_oracle_duckdb(scenario, which):
    wd, logs, offline, dims, ttl, expected = scenario
    keys = KEYS[which]
    ref = None
    combos = itertools.product((1, 2, 3, 65_536), (1, 2, 3, 7), ("parquet", "arrow"))
    for batch_rows, per_fetch, fmt in combos:
        built = build(
            wd, logs, keys, f"{which}-{batch_rows}-{per_fetch}-{fmt}",
            batch_rows=batch_rows, days_per_fetch=per_fetch, file_format=fmt,
        )  # fmt: skip
        table = built.read()
        if ref is None:
            check_against_oracle(table, expected, {k: offline[k] for k in keys}, dims, ttl)
            ref = table
        assert table.equals(ref), (batch_rows, per_fetch, fmt)
        assert built.meta["rows"] == expected.num_rows
        # batch layout: each day file is cut into ceil(n / batch_rows) batches
        for path in built.files():
            if fmt == "arrow":
                with ipc.open_file(path) as f:
                    sizes = [f.get_batch(i).num_rows for i in range(f.num_record_batches)]
            else:
                md = pq.ParquetFile(path).metadata
                sizes = [md.row_group(i).num_rows for i in range(md.num_row_groups)]
            n = sum(sizes)
            assert sizes == [min(batch_rows, n - lo) for lo in range(0, n, batch_rows)]


@pytest.mark.parametrize("writers", [1, 3])
def test_other_writer_counts(scenario, monkeypatch, writers):
    wd, logs, offline, dims, ttl, expected = scenario
    monkeypatch.setattr(build_module, "WRITERS", writers)
    for fmt in ("parquet", "arrow"):
        table = build(wd, logs, KEYS["both"], f"w{writers}{fmt}", batch_rows=2,
                      days_per_fetch=2, file_format=fmt).read()  # fmt: skip
        check_against_oracle(table, expected, offline, dims, ttl)


@pytest.mark.parametrize(
    ("batch_rows", "per_fetch", "fmt"), [(1, 1, "arrow"), (3, 2, "parquet"), (65_536, 7, "arrow")]
)
def test_feast_backend_equals_the_oracle(scenario, batch_rows, per_fetch, fmt):
    wd, logs, offline, dims, ttl, expected = scenario
    table = build(
        wd, logs, KEYS["both"], f"feast-{batch_rows}", backend="feast",
        batch_rows=batch_rows, days_per_fetch=per_fetch, file_format=fmt,
    ).read()  # fmt: skip
    check_against_oracle(table, expected, offline, dims, ttl)


def test_a_view_with_no_offline_rows_is_refused_by_name(applied_workdir, tmp_path):
    log = tmp_path / "log.parquet"
    pq.write_table(log_table([(1, 10, at(T0, 1))]), log)
    write_offline(applied_workdir, "ctr", "user", [(1, T0 - DAY, [1.0])])
    cfg = TrainingSetConfig(log, applied_workdir.root, T0, T0, ("ctr_user", "cvr_pin"))
    with pytest.raises(TrainingSetError, match="cvr_pin_embedding.*derm materialize"):
        build_training_set(cfg)


def test_only_tombstones_seen(applied_workdir, tmp_path):
    """Every row sees a tombstone (nothing present): zeros and has_ = 0 in every batch."""
    write_offline(applied_workdir, "ctr", "user", [(1, T0 - 3 * DAY, [1.0, 2.0])])
    write_offline(applied_workdir, "ctr", "user", [(1, T0 - DAY, None)], tag="1")
    log = tmp_path / "log.parquet"
    pq.write_table(log_table([(1, 10, at(T0, h)) for h in range(5)]), log)
    for backend, fmt in itertools.product(("duckdb", "feast"), ("parquet", "arrow")):
        cfg = TrainingSetConfig(log, applied_workdir.root, T0, T0, ("ctr_user",),
                                name=backend + fmt, batch_rows=2, file_format=fmt)  # fmt: skip
        table = build_training_set(cfg, backend=backend).read()
        assert table.column("has_ctr_user_embedding").to_pylist() == [0] * 5
        assert table.column("ctr_user_embedding").to_pylist() == [[0.0, 0.0]] * 5


@pytest.mark.parametrize("fmt", ["parquet", "arrow"])
def test_a_dictionary_feature_over_several_files(applied_workdir, tmp_path, fmt):
    """The log contract allows dictionary-typed categorical features (e.g. a pandas
    Categorical). Each Parquet file (and row group) comes back with its own dictionary."""
    write_offline(applied_workdir, "ctr", "user", [(1, T0 - DAY, [1.0, 2.0])])
    folder = tmp_path / "logs" / f"ds={T0}"
    folder.mkdir(parents=True)
    for i, country in enumerate((["fr", "de"], ["us", "jp", "fr"])):
        events = [(1, 10, at(T0, i * 5 + j)) for j in range(len(country))]
        extra = {"user_country": pa.array(country).dictionary_encode()}
        pq.write_table(log_table(events, extra), folder / f"part-{i}.parquet")
    cfg = TrainingSetConfig(folder.parent, applied_workdir.root, T0, T0, ("ctr_user",),
                            batch_rows=2, file_format=fmt)  # fmt: skip
    table = build_training_set(cfg).read()
    assert table.column("user_country").to_pylist() == ["fr", "de", "us", "jp", "fr"]


def test_a_dictionary_feature_at_the_default_batch_rows(applied_workdir, tmp_path):
    """The same at the default batch_rows: a day of 65,537 rows in two files (each with its
    own dictionary) has a batch boundary between them; an Arrow IPC file holds one
    dictionary per column, so the day's dictionaries are unified before it is written."""
    write_offline(applied_workdir, "ctr", "user", [(1, T0 - DAY, [1.0, 2.0])])
    folder = tmp_path / "logs" / f"ds={T0}"
    folder.mkdir(parents=True)
    for i, (n, country) in enumerate(((65_536, "fr"), (1, "us"))):
        stamp = at(T0, 12)
        table = pa.table(
            {
                "user_id": pa.array(np.ones(n, np.int64)),
                "pin_id": pa.array(np.full(n, 10, np.int64)),
                "ts": pa.array([stamp] * n, UTC),
                "click": pa.array(np.zeros(n, np.int8)),
                "conversion": pa.array(np.zeros(n, np.int8)),
                "user_country": pa.array([country] * n).dictionary_encode(),
            }
        )
        pq.write_table(table, folder / f"part-{i}.parquet")
    cfg = TrainingSetConfig(folder.parent, applied_workdir.root, T0, T0, ("ctr_user",),
                            file_format="arrow")  # fmt: skip
    table = build_training_set(cfg).read(columns=["user_country"])
    assert table.num_rows == 65_537
    assert table.column("user_country")[-1].as_py() == "us"


def test_string_ids_in_batches(applied_workdir, tmp_path):
    from derm_features.core.ids import hash_ids_to_int64

    names = ["alice", "bob", "carol"]
    hashed = dict(zip(names, hash_ids_to_int64(pa.array(names)).tolist(), strict=True))
    offline = write_offline(
        applied_workdir, "ctr", "user", [(hashed[n], T0 - DAY, [float(i), 1.0]) for i, n in
                                         enumerate(names[:2])])  # fmt: skip
    events = [("carol", "p1"), ("alice", "p2"), ("bob", "p1"), ("alice", "p3"), ("zed", "p1")]
    table = pa.table(
        {
            "user_id": pa.array([e[0] for e in events]),
            "pin_id": pa.array([e[1] for e in events]),
            "ts": pa.array([at(T0, i) for i in range(len(events))], UTC),
            "click": pa.array([0] * len(events), pa.int8()),
            "conversion": pa.array([0] * len(events), pa.int8()),
        }
    )
    log = tmp_path / "log.parquet"
    pq.write_table(table, log)
    for fmt in ("parquet", "arrow"):
        cfg = TrainingSetConfig(log, applied_workdir.root, T0, T0, ("ctr_user",), name=fmt,
                                batch_rows=2, file_format=fmt)  # fmt: skip
        got = build_training_set(cfg).read()
        assert got.column("user_id").to_pylist() == [e[0] for e in events]
        want = [oracle(offline, hashed.get(e[0], -1), T0, applied_workdir.spec.feast_ttl)
                for e in events]  # fmt: skip
        assert got.column("has_ctr_user_embedding").to_pylist() == [
            int(w is not None) for w in want
        ]
        assert got.column("ctr_user_embedding").to_pylist() == [w or [0.0, 0.0] for w in want]


@pytest.mark.parametrize("days_per_fetch", [0, -1])
def test_days_per_fetch_below_one_is_refused_by_name(applied_workdir, tmp_path, days_per_fetch):
    """days_per_fetch < 1 is refused naming it (as batch_rows < 1), not a ZeroDivisionError."""
    write_offline(applied_workdir, "ctr", "user", [(1, T0 - DAY, [1.0, 2.0])])
    log = tmp_path / "log.parquet"
    pq.write_table(log_table([(1, 10, at(T0, 1))]), log)
    with pytest.raises(TrainingSetError, match="days_per_fetch"):
        cfg = TrainingSetConfig(log, applied_workdir.root, T0, T0, ("ctr_user",),
                                days_per_fetch=days_per_fetch)  # fmt: skip
        build_training_set(cfg)
