"""The synthetic ad-log generator: contract, determinism, rates and the structure it promises."""

from __future__ import annotations

import datetime as dt
import json

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

from derm_features.cli import app
from derm_features.core.logs import open_log
from derm_features.synthetic import (
    GAP_DAYS,
    GenerateConfig,
    generate_logs,
    true_affinity,
)
from derm_features.synthetic.world import interest_at

START = dt.date(2026, 1, 1)
SMALL = dict(users=2_000, pins=500, days=7, impressions_per_day=20_000, start=START)

EXPECTED_SCHEMA = pa.schema(
    [
        ("user_id", pa.int64()),
        ("pin_id", pa.int64()),
        ("ts", pa.timestamp("us", "UTC")),
        ("click", pa.int8()),
        ("conversion", pa.int8()),
        ("surface", pa.string()),
        ("user_country", pa.string()),
        ("user_age_bucket", pa.int8()),
        ("user_sessions_7d", pa.float32()),
        ("user_clicks_30d", pa.float32()),
        ("user_recent_pins", pa.list_(pa.int64())),
        ("user_pretrained_embedding", pa.list_(pa.float32(), 32)),
        ("pin_category", pa.int32()),
        ("pin_advertiser_id", pa.int64()),
        ("pin_impressions_7d", pa.float32()),
        ("pin_content_embedding", pa.list_(pa.float32(), 32)),
        ("ctx_surface", pa.string()),
        ("ctx_hour", pa.int8()),
        ("ctx_position", pa.int16()),
    ]
)


def run(out, **overrides):
    return generate_logs(GenerateConfig(out=out, progress=False, **{**SMALL, **overrides}))


def read_log(out) -> pa.Table:
    files = sorted((out / "logs").rglob("*.parquet"))
    return pa.concat_tables(pq.read_table(f) for f in files)


@pytest.fixture(scope="module")
def small(tmp_path_factory):
    out = tmp_path_factory.mktemp("gen") / "small"
    summary = run(out)
    return out, summary, read_log(out)


def test_output_passes_the_log_contract_with_the_exact_schema(small):
    out, _, _ = small
    log = open_log(out / "logs")
    assert log.partitioned
    assert [d.isoformat() for d in log.days()] == [
        (START + dt.timedelta(days=i)).isoformat() for i in range(SMALL["days"])
    ]
    for f in log.files:
        assert f.name == "part-0.parquet" and f.parent.name.startswith("ds=")
        assert pq.read_schema(f).remove_metadata().equals(EXPECTED_SCHEMA), f


def test_values_are_consistent_within_each_row(small):
    out, summary, table = small
    for f in sorted((out / "logs").rglob("*.parquet")):
        day = dt.date.fromisoformat(f.parent.name[3:])
        ts_day = pc.cast(
            pc.cast(pq.read_table(f, columns=["ts"])["ts"], pa.timestamp("us")), pa.date32()
        )
        assert set(ts_day.to_pylist()) == {day}
    assert table["conversion"].null_count == 0
    assert table["surface"].equals(table["ctx_surface"])
    assert set(table["surface"].unique().to_pylist()) == {"home_feed", "related_pins", "search"}
    hours = pc.hour(table["ts"]).to_numpy()
    np.testing.assert_array_equal(hours, table["ctx_hour"].to_numpy())
    position = table["ctx_position"].to_numpy()
    assert position.min() >= 1 and position.max() <= 50
    assert 10 <= len(table["user_country"].unique()) <= 20
    lengths = pc.list_value_length(table["user_recent_pins"]).to_numpy()
    assert lengths.max() <= 20 and lengths.min() == 0 and (lengths > 0).any()
    assert summary.rows == table.num_rows == SMALL["days"] * SMALL["impressions_per_day"]
    assert summary.clicks == int(pc.sum(table["click"]).as_py())


def test_recent_pins_are_earlier_clicks_of_that_user_newest_first(small):
    _, _, table = small
    rows = table.select(["user_id", "pin_id", "ts", "click", "user_recent_pins"]).to_pylist()
    clicks: dict[int, list[tuple[dt.datetime, int]]] = {}
    for r in rows:
        if r["click"]:
            clicks.setdefault(r["user_id"], []).append((r["ts"], r["pin_id"]))
    checked = 0
    for r in rows[-5_000:]:
        if not r["user_recent_pins"]:
            continue
        day_start = r["ts"].replace(hour=0, minute=0, second=0, microsecond=0)
        before = sorted((c for c in clicks[r["user_id"]] if c[0] < day_start), reverse=True)
        assert r["user_recent_pins"] == [pin for _, pin in before[:20]]
        checked += 1
    assert checked > 100


def test_same_seed_same_bytes_other_seed_differs(small, tmp_path):
    out, _, table = small
    again = tmp_path / "again"
    run(again)
    for f in sorted(out.rglob("*")):
        if f.is_file():
            assert (again / f.relative_to(out)).read_bytes() == f.read_bytes(), f
    other = tmp_path / "other"
    run(other, seed=1)
    assert not read_log(other).equals(table)


def test_rates_are_realistic(small):
    _, summary, table = small
    click = table["click"].to_numpy().astype(bool)
    conversion = table["conversion"].to_numpy().astype(bool)
    ctr = click.mean()
    per_click = conversion[click].mean()
    view_through = (conversion & ~click).sum() / max(conversion.sum(), 1)
    print(f"CTR {ctr:.4f}, conversions per click {per_click:.4f}, view-through {view_through:.3f}")
    assert 0.005 <= ctr <= 0.03
    assert 0.02 <= per_click <= 0.12
    assert 0 < view_through < 0.3  # conversions come mostly after clicks
    assert summary.ctr == pytest.approx(ctr)


def test_context_moves_ctr(small):
    _, _, table = small
    click = table["click"].to_numpy()
    position = table["ctx_position"].to_numpy()
    surface = table["surface"].to_numpy(zero_copy_only=False)
    assert click[position <= 3].mean() > 1.5 * click[position >= 15].mean()
    assert click[surface == "search"].mean() > click[surface == "home_feed"].mean()


def test_activity_is_heavy_tailed(small):
    _, summary, table = small
    day = pc.cast(pc.cast(table["ts"], pa.timestamp("us")), pa.date32())
    pairs = pa.table({"u": table["user_id"], "d": day}).group_by(["u", "d"]).aggregate([])
    active_days = pairs.group_by("u").aggregate([("d", "count")])["d_count"].to_numpy()
    every_day = (active_days == SMALL["days"]).mean()
    print(
        f"users seen {len(active_days)}, median active days {np.median(active_days)}, "
        f"active every day {every_day:.3f}"
    )
    assert np.median(active_days) <= 2
    assert every_day < 0.2
    assert summary.mean_active_users_per_day < 0.5 * SMALL["users"]
    assert summary.new_users > 0 and summary.new_pins > 0
    impressions_per_pin = np.sort(
        np.bincount(table["pin_id"].to_numpy() - table["pin_id"].to_numpy().min())
    )
    top = impressions_per_pin[::-1][: len(impressions_per_pin) // 10].sum()
    assert top > 0.4 * table.num_rows  # the top 10% of Pins take a large share


def test_true_affinity_explains_clicks_conversions_and_targeting(small):
    out, _, table = small
    meta = json.loads((out / "truth" / "meta.json").read_text())
    assert meta["config"]["seed"] == 0 and "click_affinity" in meta["formulas"]
    day = START + dt.timedelta(days=3)
    rows = table.filter(
        pc.equal(pc.cast(pc.cast(table["ts"], pa.timestamp("us")), pa.date32()), pa.scalar(day))
    )
    users, pins = rows["user_id"].to_numpy(), rows["pin_id"].to_numpy()
    click = rows["click"].to_numpy().astype(bool)
    conversion = rows["conversion"].to_numpy().astype(bool)
    click_aff = true_affinity(out / "truth", users, pins, day, kind="click")
    conv_aff = true_affinity(out / "truth", users, pins, day.isoformat(), kind="conversion")
    print(
        f"click affinity: clicked {click_aff[click].mean():.2f}, not {click_aff[~click].mean():.2f}"
    )
    assert click_aff[click].mean() > click_aff[~click].mean() + 0.5
    assert conv_aff[click & conversion].mean() > conv_aff[click & ~conversion].mean()
    corr = np.corrcoef(click_aff, conv_aff)[0, 1]
    assert 0.1 < corr < 0.9  # shares part, not all, of the click affinity
    shuffled = np.random.default_rng(0).permutation(pins)
    assert click_aff.mean() > true_affinity(out / "truth", users, shuffled, day).mean()
    with pytest.raises(KeyError, match="user_id"):
        true_affinity(out / "truth", np.array([-1]), pins[:1], day)


def test_user_pretrained_embedding_is_a_noisy_view_of_yesterdays_interest(small):
    """A linear map from the column recovers most of the user's true interest on the day
    before (not the day itself: a daily representation is built from yesterday's activity);
    the same user has one vector per day; the column is off with user_pretrained_dim 0."""
    out, _, table = small
    users = pq.read_table(out / "truth" / "users.parquet")
    day = START + dt.timedelta(days=4)
    rows = table.filter(
        pc.equal(pc.cast(pc.cast(table["ts"], pa.timestamp("us")), pa.date32()), pa.scalar(day))
    )
    ids, first = np.unique(rows["user_id"].to_numpy(), return_index=True)
    emb = rows["user_pretrained_embedding"].combine_chunks().flatten().to_numpy()
    emb = emb.reshape(rows.num_rows, -1)
    per_user = {}
    for uid, vec in zip(rows["user_id"].to_numpy(), emb, strict=True):
        np.testing.assert_array_equal(per_user.setdefault(uid, vec), vec)
    idx = np.searchsorted(users["user_id"].to_numpy(), ids)

    def vectors(column):
        flat = users[column].combine_chunks().flatten().to_numpy()
        return flat.reshape(users.num_rows, -1)[idx]

    def interest(t):
        rate, phase = users["drift_rate"].to_numpy()[idx], users["drift_phase"].to_numpy()[idx]
        return interest_at(vectors("interest_a"), vectors("interest_b"), rate, phase, t)

    x = np.c_[emb[first], np.ones(len(first))]

    def r2(target):  # fitted on half the users, scored on the other half
        fit, held = slice(0, None, 2), slice(1, None, 2)
        coef = np.linalg.lstsq(x[fit], target[fit], rcond=None)[0]
        err = x[held] @ coef - target[held]
        return 1 - (err**2).sum() / ((target[held] - target[held].mean(0)) ** 2).sum()

    yesterday = r2(interest(3))
    shuffled = r2(np.random.default_rng(0).permutation(interest(3)))
    past = r2(interest(60))
    print(
        f"R^2 of yesterday's interest {yesterday:.3f}, day 60 {past:.3f}, shuffled {shuffled:.3f}"
    )
    assert yesterday > 0.3 and shuffled < 0.0
    assert yesterday > past  # a day long past explains less


def test_user_pretrained_embedding_can_be_turned_off(tmp_path):
    from derm_features.synthetic.config import WorldParams

    run(tmp_path / "off", days=1, world=WorldParams(user_pretrained_dim=0))
    assert "user_pretrained_embedding" not in read_log(tmp_path / "off").column_names


def test_long_run_has_users_back_after_more_than_90_days(tmp_path):
    out = tmp_path / "long"
    summary = run(out, users=300, pins=100, days=120, impressions_per_day=300)
    table = read_log(out).select(["user_id", "ts"])
    day = pc.cast(pc.cast(table["ts"], pa.timestamp("us")), pa.date32()).cast(pa.int32()).to_numpy()
    user = table["user_id"].to_numpy()
    order = np.lexsort((day, user))
    user, day = user[order], day[order]
    same = user[1:] == user[:-1]
    back = np.unique(user[1:][same & (np.diff(day) > GAP_DAYS)])
    print(f"users back after > {GAP_DAYS} days: {len(back)}")
    assert len(back) >= 1
    assert summary.users_with_gap_over_90d == len(back)


@pytest.mark.parametrize(
    "args, flag",
    [
        (["--users", "0"], "--users must be >= 1"),
        (["--pins", "-3"], "--pins must be >= 1"),
        (["--days", "0"], "--days must be >= 1"),
        (["--impressions-per-day", "0"], "--impressions-per-day must be >= 1"),
        (["--seed", "-1"], "--seed must be >= 0"),
        (["--start", "2026-02-30"], "--start must be a day as YYYY-MM-DD"),
    ],
)
def test_cli_rejects_bad_flags_naming_them(tmp_path, args, flag):
    res = CliRunner().invoke(app, ["generate", "--out", str(tmp_path / "x"), *args])
    assert res.exit_code == 2
    assert flag in res.output
    assert not (tmp_path / "x").exists()


def test_cli_refuses_to_overwrite_an_earlier_run(tmp_path):
    out = tmp_path / "run"
    args = [
        "generate",
        "--out",
        str(out),
        "--users",
        "50",
        "--pins",
        "20",
        "--days",
        "2",
        "--impressions-per-day",
        "100",
    ]
    first = CliRunner().invoke(app, args)
    assert first.exit_code == 0, first.output
    assert "CTR" in first.output
    before = {f: f.read_bytes() for f in out.rglob("*.parquet")}
    res = CliRunner().invoke(app, [*args, "--seed", "7"])
    assert res.exit_code == 2 and "--out" in res.output and "--overwrite" in res.output
    assert {f: f.read_bytes() for f in out.rglob("*.parquet")} == before
    res = CliRunner().invoke(app, [*args, "--seed", "7", "--overwrite"])
    assert res.exit_code == 0, res.output
    assert json.loads((out / "truth" / "meta.json").read_text())["config"]["seed"] == 7
