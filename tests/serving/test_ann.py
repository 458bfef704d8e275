"""Pin ANN index: exactness of the flat index, recall of HNSW, files, CLI, Redis source."""

from __future__ import annotations

import datetime as dt
import json

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from materialize_helpers import DIM, VERSION, daily_table, unit_rows, write_daily
from typer.testing import CliRunner

from derm_features.cli import app
from derm_features.serving.ann import (
    ID_MAP_FILE,
    INDEX_FILE,
    MANIFEST_FILE,
    MISSING_PIN,
    AnnIndexError,
    IndexConfig,
    PinIndex,
    build_index,
    exact_search,
    index_days,
    l2_normalise,
    load_index,
)
from derm_features.serving.popularity import Positives, fit_beta, log_popularity, recall_per_user
from materialize.job import MaterializeConfig, materialize_day
from materialize.storage import read_pool

DAY = dt.date(2024, 3, 1)


def make_index(n=500, dim=DIM, kind="flat", seed=0, **kw) -> tuple[PinIndex, np.ndarray]:
    vectors = np.random.default_rng(seed).standard_normal((n, dim)).astype(np.float32)
    ids = np.arange(n, dtype=np.int64) * 7 + 1000
    index = PinIndex.from_vectors(
        ids, vectors, model="ctr", day=DAY, model_version=VERSION, kind=kind, **kw
    )
    return index, vectors


def test_flat_index_equals_exact_search_by_cosine():
    index, vectors = make_index()
    queries = np.random.default_rng(1).standard_normal((20, DIM)).astype(np.float32) * 3.0
    pin_ids, scores = index.retrieve(queries, k=10)
    rows, exact_scores = exact_search(l2_normalise(vectors), l2_normalise(queries), 10)
    np.testing.assert_array_equal(pin_ids, index.pin_ids[rows])
    np.testing.assert_allclose(scores, exact_scores, rtol=1e-5, atol=1e-6)
    assert np.all(scores <= 1.0 + 1e-6)
    assert np.all(np.diff(scores, axis=1) <= 1e-6)  # best first


def test_hnsw_recall_against_exact_search():
    index, vectors = make_index(n=3000, dim=16, kind="hnsw", hnsw_m=16, ef_search=64)
    assert index.manifest.kind == "hnsw"
    queries = np.random.default_rng(2).standard_normal((50, 16)).astype(np.float32)
    pin_ids, _ = index.retrieve(queries, k=20)
    rows, _ = exact_search(l2_normalise(vectors), l2_normalise(queries), 20)
    overlap = np.mean(
        [len(set(a) & set(b)) / 20 for a, b in zip(pin_ids, index.pin_ids[rows], strict=True)]
    )
    assert overlap >= 0.9


def test_k_beyond_the_index_pads_and_bad_dimension_is_named():
    index, _ = make_index(n=5)
    pin_ids, scores = index.retrieve(np.ones((2, DIM), np.float32), k=8)
    assert pin_ids.shape == (2, 8) and scores.shape == (2, 8)
    assert set(pin_ids[:, :5].ravel()) == set(index.pin_ids)
    assert np.all(pin_ids[:, 5:] == MISSING_PIN) and np.all(np.isneginf(scores[:, 5:]))
    with pytest.raises(ValueError, match="D=3.*D=8"):
        index.retrieve(np.ones((1, 3), np.float32), k=1)
    with pytest.raises(ValueError, match="k must be"):
        index.retrieve(np.ones((1, DIM), np.float32), k=0)


def test_zero_norm_rows_are_left_out_and_counted():
    vectors = unit_rows(np.random.default_rng(0), 4)
    vectors[2] = 0
    index = PinIndex.from_vectors(
        np.array([1, 2, 3, 4]), vectors, model="ctr", day=DAY, model_version=VERSION
    )
    assert index.manifest.count == 3 and index.manifest.skipped_zero_norm == 1
    assert 3 not in index.pin_ids


def materialize_pins(workdir, days: int, n: int = 300, seed: int = 0) -> dict:
    """Real Pin pools for `days` days; returns the last day's daily vectors by id."""
    rng = np.random.default_rng(seed)
    ids = np.arange(n) + 5_000_000_000
    last = {}
    for t in range(days):
        d = DAY + dt.timedelta(days=t)
        e = unit_rows(rng, n)
        table = daily_table(ids, e, d, id_column="pin_id")
        write_daily(workdir, "ctr", "pin", d, table)
        materialize_day(
            MaterializeConfig(workdir, "ctr", "pin", d, heuristic="acc", online=False, buckets=2)
        )
        last = dict(zip(ids.tolist(), e, strict=True))
    return last


def test_build_from_pool_writes_versioned_atomic_files_and_loads_newest(workdir):
    vectors = materialize_pins(workdir, days=2)
    for t in range(2):
        build_index(IndexConfig(workdir, "ctr", DAY + dt.timedelta(days=t)))
    newest = DAY + dt.timedelta(days=1)
    directory = workdir.index("ctr", newest)
    assert sorted(p.name for p in directory.iterdir()) == sorted(
        [INDEX_FILE, ID_MAP_FILE, MANIFEST_FILE]
    )
    manifest = json.loads((directory / MANIFEST_FILE).read_text())
    assert manifest["count"] == 300 and manifest["dim"] == DIM
    assert manifest["day"] == newest.isoformat() and manifest["model_version"] == VERSION
    assert manifest["kind"] == "flat" and manifest["metric"] == "cosine"
    assert index_days(workdir, "ctr") == [DAY, newest]
    assert not list(directory.parent.glob(".tmp-*"))

    index = load_index(workdir, "ctr")  # newest
    assert index.manifest.day == newest.isoformat()
    some = list(vectors)[:5]
    pin_ids, scores = index.retrieve(np.stack([vectors[i] for i in some]), k=3)
    assert pin_ids[:, 0].tolist() == some  # a Pin's own vector (acc: the pool holds it)
    np.testing.assert_allclose(scores[:, 0], 1.0, atol=1e-5)


def test_missing_pool_and_missing_index_are_clear_errors(workdir):
    with pytest.raises(AnnIndexError, match="no Pin pool.*derm materialize"):
        build_index(IndexConfig(workdir, "ctr", DAY))
    with pytest.raises(AnnIndexError, match="no index for model 'cvr'.*derm index"):
        load_index(workdir, "cvr")
    with pytest.raises(ValueError, match="kind must be"):
        IndexConfig(workdir, "ctr", DAY, kind="ivf")


def test_cli_index_and_retrieve_from_pool_and_from_redis(applied_workdir):
    wd = applied_workdir
    materialize_pins(wd, days=1, n=200)
    users = unit_rows(np.random.default_rng(5), 3)
    user_ids = [11, 12, 13]
    write_daily(wd, "ctr", "user", DAY, daily_table(user_ids, users, DAY))
    materialize_day(MaterializeConfig(wd, "ctr", "user", DAY, online=True, buckets=1))
    runner = CliRunner()
    built = runner.invoke(app, ["index", "--workdir", str(wd.root), "--date", DAY.isoformat()])
    assert built.exit_code == 0, built.output
    assert "200 Pins" in built.output

    expected, _ = load_index(wd, "ctr").retrieve(users[1:2], k=5)
    for source in ("pool", "redis"):
        args = ["retrieve", "--workdir", str(wd.root), "--user", "12", "--k", "5", "--from", source]
        result = runner.invoke(app, args)
        assert result.exit_code == 0, result.output
        lines = [line for line in result.output.splitlines() if not line.startswith("#")]
        assert [int(line.split("\t")[0]) for line in lines] == expected[0].tolist()

    missing = runner.invoke(app, ["retrieve", "--workdir", str(wd.root), "--user", "99"])
    assert missing.exit_code == 2 and "user 99 is not in the ctr user pool" in missing.output


# ---------------------------------------------------------------- popularity added back


def popularity_index(n=400, kind="flat", seed=0, **kw) -> tuple[PinIndex, np.ndarray, np.ndarray]:
    """An index with a popularity column of distinct values, and its inputs."""
    vectors = np.random.default_rng(seed).standard_normal((n, DIM)).astype(np.float32)
    log_pop = np.log1p(np.random.default_rng(seed + 1).permutation(n)).astype(np.float32)
    index = PinIndex.from_vectors(
        np.arange(n, dtype=np.int64) * 7 + 1000, vectors, model="ctr", day=DAY,
        model_version=VERSION, kind=kind, log_popularity=log_pop, popularity="test", **kw,
    )  # fmt: skip
    return index, vectors, log_pop


def brute_force_top(vectors, log_pop, queries, beta, k):
    """Top-k rows by cos(u, p) + beta * lp(p), with NumPy on the raw inputs."""
    scores = l2_normalise(queries) @ l2_normalise(vectors).T + beta * log_pop[None, :]
    return np.argsort(-scores, axis=1, kind="stable")[:, :k], np.sort(scores, axis=1)[:, ::-1][
        :, :k
    ]


def test_popularity_index_beta_zero_is_the_cosine_index_and_beta_weights_popularity():
    index, vectors, log_pop = popularity_index()
    plain, _ = make_index(n=400)  # same vectors and ids, no popularity column
    assert index.manifest.columns == DIM + 2 and index.index.d == DIM + 2
    queries = np.random.default_rng(3).standard_normal((25, DIM)).astype(np.float32)
    ids0, scores0 = index.retrieve(queries, k=20, beta=0.0)
    plain_ids, plain_scores = plain.retrieve(queries, k=20)
    np.testing.assert_array_equal(ids0, plain_ids)
    np.testing.assert_allclose(scores0, plain_scores, atol=1e-5)
    assert index.manifest.beta == 0.0  # default beta of a fresh index
    np.testing.assert_array_equal(index.retrieve(queries, k=20)[0], plain_ids)
    # a middle beta: the brute-force score, ranks and values
    rows, expected = brute_force_top(vectors, log_pop, queries, 0.3, 20)
    ids, scores = index.retrieve(queries, k=20, beta=0.3)
    np.testing.assert_array_equal(ids, index.pin_ids[rows])
    np.testing.assert_allclose(scores, expected, atol=1e-4)
    # a large beta: popularity order, whatever the user
    ids_big, _ = index.retrieve(queries, k=20, beta=1e3)
    by_popularity = index.pin_ids[np.argsort(-log_pop)[:20]]
    assert (ids_big == by_popularity[None, :]).all()
    np.testing.assert_allclose(index.log_popularity(), log_pop, rtol=1e-6)
    np.testing.assert_allclose(index.pin_vectors(), l2_normalise(vectors), atol=1e-6)
    with pytest.raises(ValueError, match="no popularity column"):
        plain.retrieve(queries, k=5, beta=0.5)
    with pytest.raises(ValueError, match="finite"):
        index.retrieve(queries, k=5, beta=float("nan"))


def test_popularity_hnsw_matches_exact_at_every_beta():
    index, vectors, log_pop = popularity_index(n=3000, kind="hnsw", hnsw_m=16, ef_search=128)
    queries = np.random.default_rng(4).standard_normal((40, DIM)).astype(np.float32)
    for beta in (0.0, 0.1, 1.0):
        rows, _ = brute_force_top(vectors, log_pop, queries, beta, 20)
        ids, _ = index.retrieve(queries, k=20, beta=beta)
        truth = index.pin_ids[rows]
        overlap = np.mean([len(set(a) & set(b)) / 20 for a, b in zip(ids, truth, strict=True)])
        assert overlap >= 0.9, (beta, overlap)


def test_manifest_round_trips_beta_and_old_manifests_load(tmp_path):
    index, _, _ = popularity_index(n=50)
    fit = {"validation_day": "2024-03-01", "k": 10, "users": 3, "recall_at_k": {"0.0": 0.1}}
    index = index.with_beta(0.25, fit)
    index.save(tmp_path)
    loaded = PinIndex.load(tmp_path)
    assert loaded.manifest == index.manifest
    assert loaded.manifest.beta == 0.25 and loaded.manifest.beta_fit == fit
    queries = np.random.default_rng(5).standard_normal((4, DIM)).astype(np.float32)
    np.testing.assert_array_equal(loaded.retrieve(queries, 10)[0], index.retrieve(queries, 10)[0])
    np.testing.assert_array_equal(
        loaded.retrieve(queries, 10)[0], loaded.retrieve(queries, 10, beta=0.25)[0]
    )
    # a manifest written before popularity existed (no such keys) loads as beta 0
    old, _ = make_index(n=30)
    (tmp_path / "old").mkdir()
    old.save(tmp_path / "old")
    raw = json.loads((tmp_path / "old" / MANIFEST_FILE).read_text())
    for key in ("popularity", "popularity_days", "popularity_scale", "beta", "beta_fit"):
        raw.pop(key)
    (tmp_path / "old" / MANIFEST_FILE).write_text(json.dumps(raw))
    assert PinIndex.load(tmp_path / "old").manifest.beta == 0.0


def test_log_popularity_recall_and_fit_beta_by_hand():
    positives = Positives(np.array([1, 2, 3, 1, 9]), np.array([10, 10, 10, 11, 10]))
    lp = log_popularity(np.array([11, 12, 10]), positives)
    np.testing.assert_allclose(lp, np.log([2, 1, 5]))  # 1 + count: 1, 0 and 4 positives
    assert {u: p.tolist() for u, p in positives.by_user().items()} == {
        1: [10, 11],
        2: [10],
        3: [10],
        9: [10],
    }
    # two Pins; the user is closer to Pin 0 but acts on the popular Pin 1
    users = np.array([[1.0, 0.0]])
    pins = np.array([[1.0, 0.0], [0.0, 1.0]])
    pop = np.array([0.0, 2.0])
    targets = [np.array([1, -1])]  # Pin 1, and one Pin outside the pool (never hit)
    assert recall_per_user(users, pins, pop, targets, beta=0.0, k=1).tolist() == [0.0]
    # cos 1 + 0 vs cos 0 + 2 beta: Pin 1 wins once beta > 0.5
    assert recall_per_user(users, pins, pop, targets, beta=0.6, k=1).tolist() == [0.5]
    beta, recalls = fit_beta(users, pins, pop, targets, k=1, grid=(0.0, 0.5, 0.6, 2.0))
    assert beta == 0.6  # the smallest of the best (0.5 ties: Pin 0 keeps its place)
    assert recalls == {0.0: 0.0, 0.5: 0.0, 0.6: 0.5, 2.0: 0.5}


def write_log(workdir, rows_by_day: dict) -> None:
    """A contract log in workdir/logs/ds=<day>/: rows (user, pin, click) per day."""
    for day, rows in rows_by_day.items():
        users, pins, clicks = (np.array(c, dtype=np.int64) for c in zip(*rows, strict=True))
        ts = np.datetime64(day.isoformat(), "us") + np.arange(len(rows)).astype("timedelta64[s]")
        table = pa.table(
            {
                "user_id": users,
                "pin_id": pins,
                "ts": pa.array(ts, pa.timestamp("us", "UTC")),
                "click": clicks,
                "conversion": pa.nulls(len(rows), pa.int64()),
            }
        )
        directory = workdir.logs / f"ds={day.isoformat()}"
        directory.mkdir(parents=True, exist_ok=True)
        pq.write_table(table, directory / "part-0.parquet")


def popular_world(wd) -> tuple[dt.date, np.ndarray, dict]:
    """Two days of Pin and user pools and a log where users click the popular Pins:
    Pin i < 10 gets 3 * (10 - i) clicks on day 0; on day 1 users 11..20 click Pins 0..4."""
    day1 = DAY + dt.timedelta(days=1)
    pin_vectors = materialize_pins(wd, days=2, n=200)
    pins = np.array(sorted(pin_vectors))
    users = np.arange(11, 21)
    rng = np.random.default_rng(7)
    for d in (DAY, day1):
        write_daily(wd, "ctr", "user", d, daily_table(users, unit_rows(rng, len(users)), d))
        materialize_day(MaterializeConfig(wd, "ctr", "user", d, online=False, buckets=1))
    day0_rows = [(100 + j, pins[i], 1) for i in range(10) for j in range(3 * (10 - i))]
    day0_rows += [(100, p, 0) for p in pins[10:]]  # impressions without clicks
    day1_rows = [(u, pins[i], 1) for u in users for i in range(5)]
    write_log(wd, {DAY: day0_rows, day1: day1_rows})
    return day1, pins, {"users": users}


def test_build_index_counts_popularity_and_fits_beta_on_the_index_day(workdir):
    day1, pins, _ = popular_world(workdir)
    index = build_index(IndexConfig(workdir, "ctr", day1, fit_k=5))
    m = index.manifest
    assert m.popularity == f"log(1 + click count over {DAY - dt.timedelta(days=5)}..{day1})"
    assert m.popularity_days == 7 and m.metric == "cosine + beta * log_popularity"
    # the column counts both days: Pin 0 has 30 clicks on day 0 and 10 on day 1
    lp = dict(zip(index.pin_ids.tolist(), index.log_popularity().tolist(), strict=True))
    assert lp[pins[0]] == pytest.approx(np.log(41)) and lp[pins[5]] == pytest.approx(np.log(16))
    assert lp[pins[50]] == 0.0
    # the fit: day 1's clicks (Pins 0..4) from the pools and popularity of day 0, where
    # Pins 0..4 are the five most clicked: a large enough beta gets all of them
    fit = m.beta_fit
    assert fit["validation_day"] == day1.isoformat() and fit["k"] == 5 and fit["users"] == 10
    assert fit["recall_at_k"]["10.0"] == 1.0 and m.beta > 0
    assert fit["recall_at_k"][str(m.beta)] == max(fit["recall_at_k"].values())
    assert load_index(workdir, "ctr").manifest == m
    # no pools of the day before: beta 0, with the reason
    first = build_index(IndexConfig(workdir, "ctr", DAY))
    assert first.manifest.beta == 0.0 and "not fitted" in first.manifest.beta_fit["note"]
    fixed = build_index(IndexConfig(workdir, "ctr", day1, beta=0.07))
    assert fixed.manifest.beta == 0.07 and "given" in fixed.manifest.beta_fit["note"]
    off = build_index(IndexConfig(workdir, "ctr", day1, popularity_days=0))
    assert off.manifest.popularity is None and off.index.d == DIM
    with pytest.raises(AnnIndexError, match="--logs"):
        IndexConfig(workdir, "ctr", day1, logs=workdir.root / "nowhere").popularity_log()


def test_cli_index_fits_beta_and_retrieve_honours_it_and_the_override(workdir):
    day1, _, world = popular_world(workdir)
    runner = CliRunner()
    root = str(workdir.root)
    built = runner.invoke(app, ["index", "--workdir", root, "--date", day1.isoformat()])
    assert built.exit_code == 0, built.output
    index = load_index(workdir, "ctr")
    beta = index.manifest.beta
    assert f"beta {beta:g} (fitted on {day1}" in built.output
    user_vector = read_pool(workdir.pool("ctr", "user", day1), ["user_id", "embedding"])
    row = user_vector["user_id"].to_pylist().index(12)
    vector = np.asarray(user_vector["embedding"][row].as_py(), np.float32)[None, :]

    def listed(*extra):
        args = ["retrieve", "--workdir", root, "--user", "12", "--k", "8", *extra]
        result = runner.invoke(app, args)
        assert result.exit_code == 0, result.output
        lines = result.output.splitlines()
        return lines[0], [int(line.split("\t")[0]) for line in lines[1:]]

    header, default = listed()
    assert f"beta {beta:g}" in header
    assert default == index.retrieve(vector, 8, beta)[0][0].tolist()
    header, plain = listed("--beta", "0")
    assert "beta 0" in header and plain == index.retrieve(vector, 8, 0.0)[0][0].tolist()
    assert plain != default
    bad = runner.invoke(app, ["index", "--workdir", root, "--date", day1.isoformat(),
                              "--logs", str(workdir.root / "nowhere")])  # fmt: skip
    assert bad.exit_code == 2 and "--logs" in bad.output


def test_a_beta_without_popularity_is_refused(tmp_path):
    from derm_features.core.workdir import Workdir
    from derm_features.serving.ann import IndexConfig

    with pytest.raises(ValueError, match="--popularity-days 0 turns off"):
        IndexConfig(workdir=Workdir(tmp_path), model="ctr", day=dt.date(2026, 1, 1),
                    popularity_days=0, beta=0.3)  # fmt: skip
    IndexConfig(workdir=Workdir(tmp_path), model="ctr", day=dt.date(2026, 1, 1),
                popularity_days=0, beta=0.0)  # fmt: skip
