"""The DERM spec: one TTL for the pool and Feast, and a third upstream model end to end."""

from __future__ import annotations

import dataclasses
import datetime as dt
import json

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from materialize_helpers import daily_table, unit_rows, write_daily
from typer.testing import CliRunner

from derm_features.cli import app
from derm_features.core.spec import DermSpec, SpecError, load_spec
from derm_features.core.workdir import Workdir
from derm_features.feast.repo import apply, feature_store
from materialize.storage import read_pool

LAST = dt.date(2026, 1, 1)  # the entity's last day


def test_spec_from_derm_yaml_names_every_view_and_label(tmp_path):
    path = tmp_path / "derm.yaml"
    path.write_text("spec:\n  models: {ctr: click, cvr: conversion, save: save}\n  ttl_days: 30\n")
    spec = load_spec(path)
    assert spec.model_names == ("ctr", "cvr", "save") and spec.labels[-1] == "save"
    assert [v for _, _, v in spec.views()][-2:] == ["save_user_embedding", "save_pin_embedding"]
    assert spec.feast_ttl == dt.timedelta(days=31)
    with pytest.raises(SpecError, match="spec.models.save: label 'user_age'"):
        DermSpec(models={"save": "user_age"})


def _pin_served_on(wd: Workdir, days_after: list[int]) -> list[bool]:
    """Whether Feast's offline store serves pin 1 (last seen on LAST) to an event at noon
    of LAST + d, for each d."""
    from materialize.job import MaterializeConfig, materialize_day

    e = unit_rows(np.random.default_rng(0), 1)
    write_daily(wd, "ctr", "pin", LAST, daily_table([1], e, LAST, id_column="pin_id"))
    materialize_day(MaterializeConfig(wd, "ctr", "pin", LAST, online=False))
    events = pd.DataFrame(
        {
            "pin_id": [1] * len(days_after),
            "event_timestamp": [
                pd.Timestamp(LAST + dt.timedelta(days=d), tz="UTC") + pd.Timedelta(hours=12)
                for d in days_after
            ],
        }
    )
    got = (
        feature_store(wd)
        .get_historical_features(entity_df=events, features=["ctr_pin_embedding:ctr_pin_embedding"])
        .to_df()
    )
    got = got.sort_values("event_timestamp")
    return [
        v is not None and not (isinstance(v, float) and np.isnan(v))
        for v in got["ctr_pin_embedding"]
    ]


def test_one_ttl_feast_stops_serving_when_the_pool_drops_the_entity(workdir, redis_url):
    # The pool keeps an entity last seen on day L through day L + ttl_days; the pool of day
    # t serves events of day t + 1. So with 30 days the last served day is L + 31.
    wd = dataclasses.replace(workdir, spec=DermSpec(ttl_days=30))
    apply(wd, quiet=True)
    assert _pin_served_on(wd, [0, 1, 30, 31, 32, 40]) == [False, True, True, True, False, False]


def test_default_spec_still_serves_past_thirty_days(workdir, redis_url):
    apply(workdir, quiet=True)
    assert _pin_served_on(workdir, [32, 91, 92]) == [True, True, False]


def test_a_ttl_flag_unlike_the_registered_views_is_refused(applied_workdir):
    result = CliRunner().invoke(
        app,
        ["materialize", "--model", "ctr", "--entity", "pin", "--date", "2026-01-01",
         "--workdir", str(applied_workdir.root), "--ttl-days", "30", "--no-online"],
    )  # fmt: skip
    assert result.exit_code == 2
    assert "--ttl-days 30 differs from the 90 days" in result.output
    assert "derm apply" in result.output
    assert not applied_workdir.pool_dir("ctr", "pin").exists()


SMALL_MODEL = {"token_dim": 8, "num_buckets": 4096}


@pytest.mark.slow
def test_a_third_model_declared_in_derm_yaml_runs_end_to_end(tmp_path, redis_url, monkeypatch):
    """save (on a `save` label) beside ctr and cvr: apply -> train -> infer -> materialize
    -> Redis -> training set, through the CLI and derm.yaml only."""
    from derm_features.commands.settings import resolve_settings
    from derm_features.feast.online_store import EmbeddingReader
    from derm_features.synthetic import GenerateConfig, generate_logs
    from trainers.downstream.training_set import TrainingSetConfig, build_training_set

    generate_logs(
        GenerateConfig(out=tmp_path / "gen", users=500, pins=150, days=4, start=LAST, seed=5,
                       impressions_per_day=2000, progress=False)
    )  # fmt: skip
    logs = tmp_path / "logs"
    rng = np.random.default_rng(1)
    for part in sorted((tmp_path / "gen" / "logs").glob("ds=*/*.parquet")):
        table = pq.read_table(part)
        click = table["click"].to_numpy()
        save = (click == 1) & (rng.random(len(click)) < 0.6)
        out = logs / part.parent.name / part.name
        out.parent.mkdir(parents=True)
        pq.write_table(table.append_column("save", pa.array(save.astype(np.int8))), out)
    config = tmp_path / "derm.yaml"
    config.write_text(
        json.dumps(
            {
                "workdir": str(tmp_path / "wd"),
                "spec": {"models": {"ctr": "click", "cvr": "conversion", "save": "save"},
                         "embedding_dim": 16},
                "model": SMALL_MODEL,
                "train": {"batch_size": 256, "threads": 1},
                "pipeline": {"models": ["save"], "window_days": 3, "index": False},
            }
        )
    )  # fmt: skip
    monkeypatch.delenv("DERM_WORKDIR", raising=False)
    runner = CliRunner()
    done = runner.invoke(app, ["validate-logs", str(logs), "--config", str(config)])
    assert done.exit_code == 0, done.output
    done = runner.invoke(app, ["apply", "--config", str(config)])
    assert done.exit_code == 0 and "save_pin_embedding" in done.output, done.output
    done = runner.invoke(
        app, ["backfill", "--logs", str(logs), "--start", LAST.isoformat(),
              "--end", (LAST + dt.timedelta(days=3)).isoformat(), "--config", str(config)],
    )  # fmt: skip
    assert done.exit_code == 0, done.output
    summary = json.loads(next(ln for ln in reversed(done.stdout.splitlines()) if ln[:1] == "{"))
    last_day = (LAST + dt.timedelta(days=3)).isoformat()
    assert set(summary[last_day]) == {"save"} and summary[last_day]["save"]["live_pin"] > 0

    wd = resolve_settings(config).workdir
    assert wd.root == tmp_path / "wd" and wd.spec.model_names == ("ctr", "cvr", "save")
    store = feature_store(wd)
    assert {s.name for s in store.list_feature_services()} == {
        "ctr_ranking", "cvr_ranking", "save_ranking"
    }  # fmt: skip
    # Redis holds the save views, readable the way serving reads them
    pool_pins = read_pool(wd.pool("save", "pin", LAST + dt.timedelta(days=3)), ["pin_id"])["pin_id"]
    read = EmbeddingReader(store).read([], pool_pins.to_numpy()[:5], ["save_pin_embedding"])
    values, found = read["save_pin_embedding"]
    assert found.all() and values.shape == (5, 16)
    # a point-in-time training set of the last day with the save embeddings
    ts = build_training_set(
        TrainingSetConfig(logs, wd, LAST + dt.timedelta(days=3), LAST + dt.timedelta(days=3),
                          ("save_user", "save_pin"))
    )  # fmt: skip
    rows = ts.read()
    assert "save_pin_embedding" in rows.column_names
    assert rows["has_save_pin_embedding"].to_numpy().mean() > 0.5
