"""Point-in-time count features and the baselines built on them, against values by hand."""

from __future__ import annotations

import datetime as dt

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from derm_features.core.logs import open_log
from trainers.downstream.baselines import pin_rate, prior
from trainers.downstream.counts import FEATURES, SMOOTHING, CountHistory

START = dt.date(2026, 3, 1)
UTC = pa.timestamp("us", tz="UTC")


def at(day: int, hour: int) -> dt.datetime:
    return dt.datetime.combine(START + dt.timedelta(days=day), dt.time(hour), tzinfo=dt.UTC)


def write_day(root, day: int, rows: list[tuple[int, int, int, int | None]]) -> None:
    """rows: (user, pin, click, conversion) at 10:00 of `day`."""
    table = pa.table(
        {
            "user_id": pa.array([r[0] for r in rows], pa.int64()),
            "pin_id": pa.array([r[1] for r in rows], pa.int64()),
            "ts": pa.array([at(day, 10)] * len(rows), UTC),
            "click": pa.array([r[2] for r in rows], pa.int8()),
            "conversion": pa.array([r[3] for r in rows], pa.int8()),
        }
    )
    out = root / f"ds={(START + dt.timedelta(days=day)).isoformat()}"
    out.mkdir(parents=True)
    pq.write_table(table, out / "part-0.parquet")


def test_counts_see_only_days_before_the_event(tmp_path):
    logs = tmp_path / "logs"
    # day 0: Pin 7 shown 3 times, clicked twice, one conversion (and one click's label null)
    write_day(logs, 0, [(1, 7, 1, 1), (2, 7, 1, None), (3, 7, 0, None), (1, 8, 0, None)])
    # day 1: Pin 7 shown once more, clicked; day 2: the events we look up
    write_day(logs, 1, [(2, 7, 1, 0)])
    write_day(logs, 2, [(1, 7, 0, None), (9, 7, 1, 1)])
    history = CountHistory(open_log(logs), until=START + dt.timedelta(days=3))
    rows = pa.table(
        {
            "user_id": pa.array([1, 1, 9, 2], pa.int64()),
            "pin_id": pa.array([7, 7, 7, 7], pa.int64()),
            "ts": pa.array([at(0, 12), at(1, 12), at(2, 12), at(3, 12)], UTC),
        }
    )
    f = history.features(rows)
    col = {name: f[:, i] for i, name in enumerate(FEATURES)}
    # Pin 7 before day 0: nothing; before day 1: day 0 (3 shown, 2 clicks, 1 conversion of
    # 1 known); before day 2: days 0-1 (4, 3, 1 of 2); before day 3: days 0-2 (6, 4, 2 of 3)
    np.testing.assert_allclose(np.expm1(col["pin_log_impressions"]), [0, 3, 4, 6], atol=1e-5)
    np.testing.assert_allclose(np.expm1(col["pin_log_clicks"]), [0, 2, 3, 4], atol=1e-5)
    np.testing.assert_allclose(np.expm1(col["pin_log_conversions"]), [0, 1, 1, 2], atol=1e-5)
    ctr0, cvr0 = history.prior  # over days 0-2: 4 clicks in 7 impressions; 2 of 3 known
    assert (ctr0, cvr0) == pytest.approx((4 / 7, 2 / 3))
    expected_ctr = [
        (c + SMOOTHING * ctr0) / (n + SMOOTHING) for n, c in ((0, 0), (3, 2), (4, 3), (6, 4))
    ]
    np.testing.assert_allclose(col["pin_ctr"], expected_ctr, rtol=1e-5)
    # user 1 before day 1: two impressions on day 0, one click
    assert np.expm1(col["user_log_impressions"][1]) == pytest.approx(2, abs=1e-5)
    assert np.expm1(col["user_log_clicks"][1]) == pytest.approx(1, abs=1e-5)
    # an unseen user has zero counts and the prior's rates
    assert col["user_log_impressions"][2] == 0 and col["user_ctr"][2] == pytest.approx(ctr0)


def test_prior_and_pin_rate_baselines():
    np.testing.assert_allclose(prior(np.array([0, 1, 0, 0]), 3), [0.25] * 3)
    counts = torch.zeros(2, len(FEATURES))
    counts[:, FEATURES.index("pin_ctr")] = torch.tensor([0.1, 0.3])
    counts[:, FEATURES.index("pin_cvr")] = torch.tensor([0.5, 0.2])
    np.testing.assert_allclose(pin_rate(counts, "click"), [0.1, 0.3], rtol=1e-6)
    np.testing.assert_allclose(pin_rate(counts, "conversion"), [0.5, 0.2], rtol=1e-6)
    with pytest.raises(ValueError, match="count features"):
        pin_rate(torch.zeros(2, 3), "click")
