"""After `--reset-on-new-model` later events see only the new lineage, even with another D."""

from __future__ import annotations

import datetime as dt

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
from materialize_helpers import daily_table, unit_rows, write_daily

from derm_features.feast.repo import feature_store
from materialize.job import MaterializeConfig, materialize_day
from materialize.storage import offline_day_path
from trainers.downstream.training_set import view_dim

DAY0, DAY1 = dt.date(2024, 3, 1), dt.date(2024, 3, 2)
OLD, NEW = "ctr-0a1b2c3d-d8@2024-03-01", "ctr-ffffffff-d16@2024-03-02"


def test_a_reset_with_another_d_serves_only_the_new_lineage(applied_workdir):
    wd = applied_workdir
    rng = np.random.default_rng(0)
    old = unit_rows(rng, 3, 8)
    new = unit_rows(rng, 1, 16)
    write_daily(wd, "ctr", "pin", DAY0, daily_table([1, 2, 3], old, DAY0, id_column="pin_id",
                                                    version=OLD))  # fmt: skip
    write_daily(wd, "ctr", "pin", DAY1, daily_table([1], new, DAY1, id_column="pin_id",
                                                    version=NEW))  # fmt: skip
    materialize_day(MaterializeConfig(wd, "ctr", "pin", DAY0))
    report = materialize_day(MaterializeConfig(wd, "ctr", "pin", DAY1, reset_on_new_model=True))
    assert report.reset
    offline = pq.read_table(offline_day_path(wd.offline("ctr", "pin"), DAY1))
    tombstones = offline.filter(offline["embedding"].is_null())
    assert sorted(tombstones["pin_id"].to_pylist()) == [2, 3]
    assert view_dim(wd, "ctr_pin") == 16

    events = pd.DataFrame(
        {"pin_id": [1, 2, 3, 2], "event_timestamp": pd.to_datetime(
            ["2024-03-03 09:00", "2024-03-03 09:00", "2024-03-03 09:00", "2024-03-02 09:00"],
            utc=True)}
    )  # fmt: skip
    got = (
        feature_store(wd)
        .get_historical_features(entity_df=events, features=["ctr_pin_embedding:ctr_pin_embedding"])
        .to_df()
    )
    by = {(r.pin_id, r.event_timestamp.day): r.ctr_pin_embedding for r in got.itertuples()}
    np.testing.assert_allclose(np.asarray(by[(1, 3)], np.float32), new[0], rtol=1e-6)
    for pin in (2, 3):  # the old lineage is gone for events after the switch
        assert by[(pin, 3)] is None or (np.isscalar(by[(pin, 3)]) and np.isnan(by[(pin, 3)]))
    np.testing.assert_allclose(np.asarray(by[(2, 2)], np.float32), old[1], rtol=1e-6)
