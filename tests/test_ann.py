"""Pin ANN index: exactness of the flat index, recall of HNSW, files, CLI, Redis source."""

from __future__ import annotations

import datetime as dt
import json

import numpy as np
import pytest
from materialize_helpers import DIM, VERSION, daily_table, unit_rows, write_daily
from typer.testing import CliRunner

from derm_features.ann import (
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
from derm_features.cli import app
from materialize.job import MaterializeConfig, materialize_day

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
