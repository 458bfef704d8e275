"""The Feast repository: `feast apply` in a work directory, then a real Redis round trip."""

from __future__ import annotations

import datetime as dt
import os
import subprocess
import sys

import numpy as np
import pandas as pd

from derm_features.feast.redis_url import feast_connection_string, redacted
from derm_features.feast.repo import REPO_ROOT, feature_store

VIEWS = {"ctr_user_embedding", "ctr_pin_embedding", "cvr_user_embedding", "cvr_pin_embedding"}


def test_apply_registers_entities_views_and_services_in_the_workdir(applied_workdir):
    assert applied_workdir.registry.exists(), "the registry lives inside the workdir"
    store = feature_store(applied_workdir)
    assert {e.name for e in store.list_entities()} == {"user", "pin"}
    views = {v.name: v for v in store.list_feature_views()}
    assert set(views) == VIEWS
    for view in views.values():
        assert {f.name for f in view.features} == {"embedding", "last_seen", "model_version"}
        assert view.ttl >= dt.timedelta(days=90)
        # sources point into this workdir with absolute paths (DuckDB resolves relative ones
        # against the current directory)
        assert view.batch_source.path.startswith(str(applied_workdir.root))
    services = {s.name for s in store.list_feature_services()}
    assert services == {"ctr_ranking", "cvr_ranking"}


def test_online_round_trip_through_real_redis(applied_workdir, redis_url):
    store = feature_store(applied_workdir)
    now = dt.datetime.now(dt.UTC).replace(microsecond=0)
    rng = np.random.default_rng(0)
    vectors = rng.normal(size=(3, 8)).astype(np.float32)
    df = pd.DataFrame(
        {
            "user_id": [1, 2, 3],
            "embedding": list(vectors),
            "last_seen": [now] * 3,
            "model_version": ["ctr-0123abcd-d8@2026-01-01"] * 3,
            "event_timestamp": [now] * 3,
        }
    )
    store.write_to_online_store("ctr_user_embedding", df)
    got = store.get_online_features(
        features=["ctr_user_embedding:embedding", "ctr_user_embedding:model_version"],
        entity_rows=[{"user_id": 2}, {"user_id": 3}, {"user_id": 99}],
    ).to_dict()
    np.testing.assert_allclose(got["embedding"][0], vectors[1], rtol=0, atol=0)
    np.testing.assert_allclose(got["embedding"][1], vectors[2], rtol=0, atol=0)
    assert got["embedding"][2] is None
    assert got["model_version"][:2] == ["ctr-0123abcd-d8@2026-01-01"] * 2


def test_plain_feast_cli_from_repo_root_then_feature_store(workdir, redis_url):
    """`DERM_WORKDIR=W feast apply` from the repo root, then `FeatureStore(repo_path=".")`."""
    env = {**os.environ, "DERM_WORKDIR": str(workdir.root)}
    feast = os.path.join(os.path.dirname(sys.executable), "feast")
    out = subprocess.run(
        [feast, "apply"], cwd=REPO_ROOT, env=env, check=True, capture_output=True
    ).stdout.decode()
    for view in VIEWS:
        assert f"Deploying infrastructure for {view}" in out
    assert workdir.registry.exists()
    store = feature_store(workdir)
    assert {v.name for v in store.list_feature_views()} == VIEWS


def test_redis_url_forms(monkeypatch):
    monkeypatch.setenv("REDIS_URL", "rediss://user:s3cret@cache.example:6380/2")
    assert (
        feast_connection_string()
        == "cache.example:6380,db=2,ssl=true,username=user,password=s3cret"
    )
    assert "s3cret" not in redacted()
    assert redacted() == "rediss://user:***@cache.example:6380/2"
    monkeypatch.delenv("REDIS_URL")
    assert feast_connection_string() == "127.0.0.1:6379"


def test_key_ttl_seconds_is_refused_with_a_reason(tmp_path, monkeypatch):
    """Carried entities are not re-pushed daily: Redis key expiry would drop live ones."""
    import pytest

    from derm_features.core.workdir import Workdir

    text = (REPO_ROOT / "feature_store.yaml").read_text()
    config = tmp_path / "feature_store.yaml"
    config.write_text(text.replace("online_store:\n", "online_store:\n  key_ttl_seconds: 3600\n"))
    monkeypatch.setenv("FEAST_FS_YAML_FILE_PATH", str(config))
    with pytest.raises(ValueError, match="key_ttl_seconds is not supported"):
        feature_store(Workdir(tmp_path / "wd"))
