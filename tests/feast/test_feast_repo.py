"""The Feast repository: `feast apply` in a work directory, then a real Redis round trip."""

from __future__ import annotations

import datetime as dt
import os
import subprocess
import sys

import numpy as np
import pandas as pd

from derm_features.core.spec import PUBLISHED_COLUMNS
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
        model, entity = view.name.split("_")[:2]
        assert [f.name for f in view.features] == [
            f"{model}_{entity}_embedding", f"{model}_{entity}_last_seen",
            f"{model}_{entity}_model_version",
        ]  # fmt: skip
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
    # Feast's own write takes the feature names (it applies no field_mapping)
    df = df.rename(columns=lambda c: f"ctr_user_{c}" if c in PUBLISHED_COLUMNS else c)
    store.write_to_online_store("ctr_user_embedding", df)
    got = store.get_online_features(
        features=[
            "ctr_user_embedding:ctr_user_embedding",
            "ctr_user_embedding:ctr_user_model_version",
        ],
        entity_rows=[{"user_id": 2}, {"user_id": 3}, {"user_id": 99}],
    ).to_dict()
    np.testing.assert_allclose(got["ctr_user_embedding"][0], vectors[1], rtol=0, atol=0)
    np.testing.assert_allclose(got["ctr_user_embedding"][1], vectors[2], rtol=0, atol=0)
    assert got["ctr_user_embedding"][2] is None
    assert got["ctr_user_model_version"][:2] == ["ctr-0123abcd-d8@2026-01-01"] * 2


def test_feature_services_work_with_feasts_default_names(applied_workdir, redis_url):
    """`ctr_ranking` joins four views: with Feast's defaults (short names) its features
    must not collide, online and offline."""
    store = feature_store(applied_workdir)
    service = store.get_feature_service("ctr_ranking")
    stamp = dt.datetime(2024, 3, 2, tzinfo=dt.UTC)
    # every view has a file (DuckDB refuses a source without one); cvr_user only for user 8
    cases = (
        ("ctr_user_embedding", "user", 7, 1.0),
        ("cvr_user_embedding", "user", 8, 3.0),
        ("ctr_pin_embedding", "pin", 8, 4.0),
        ("cvr_pin_embedding", "pin", 7, 2.0),
    )
    for view, entity, entity_id, value in cases:
        frame = pd.DataFrame(
            {
                f"{entity}_id": [entity_id],
                "event_timestamp": [stamp],
                "embedding": [[value] * 4],
                "last_seen": [stamp],
                "model_version": ["ctr-0123abcd-d4@2024-03-01"],
            }
        )
        path = applied_workdir.offline(*view.split("_")[:2]) / "day=2024-03-01.parquet"
        frame.to_parquet(path)  # offline files keep the plain column names
        prefix = view.removesuffix("_embedding")
        named = frame.rename(columns={c: f"{prefix}_{c}" for c in PUBLISHED_COLUMNS})
        store.write_to_online_store(view, named)
    online = store.get_online_features(
        features=service, entity_rows=[{"user_id": 7, "pin_id": 7}]
    ).to_dict()
    assert online["ctr_user_embedding"] == [[1.0] * 4]
    assert online["cvr_pin_embedding"] == [[2.0] * 4]
    assert online["cvr_user_embedding"] == [None] and online["ctr_pin_embedding"] == [None]
    assert len([k for k in online if k.endswith("_embedding")]) == 4
    rows = pd.DataFrame(
        {"user_id": [7], "pin_id": [7], "event_timestamp": [stamp + dt.timedelta(hours=1)]}
    )
    offline = store.get_historical_features(entity_df=rows, features=service).to_df()
    assert list(offline["ctr_user_embedding"][0]) == [1.0] * 4
    assert list(offline["cvr_pin_embedding"][0]) == [2.0] * 4
    assert offline["ctr_user_model_version"][0] == "ctr-0123abcd-d4@2024-03-01"
    assert offline["cvr_user_embedding"].isna()[0]


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


def test_a_config_derm_cannot_write_to_is_refused_naming_the_file(tmp_path, monkeypatch):
    """Feast's default online store (sqlite, when online_store is left out) or any other
    non-Redis store: derm writes Feast's Redis layout, so it says so before any work."""
    import pytest

    from derm_features.core.workdir import Workdir

    config = tmp_path / "feature_store.yaml"
    monkeypatch.setenv("FEAST_FS_YAML_FILE_PATH", str(config))
    for online in ("", "online_store:\n  type: dynamodb\n"):
        config.write_text(f"project: ads\nprovider: local\nregistry: registry.db\n{online}")
        with pytest.raises(ValueError, match=rf"{config}: online_store.type .* must be `redis`"):
            feature_store(Workdir(tmp_path / "wd"))
    monkeypatch.setenv("FEAST_FS_YAML_FILE_PATH", str(tmp_path / "missing.yaml"))
    with pytest.raises(ValueError, match="missing.yaml: Feast config not found"):
        feature_store(Workdir(tmp_path / "wd"))
