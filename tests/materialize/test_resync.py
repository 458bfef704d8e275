"""Redis restarted empty: `derm status` sees it, `derm materialize --resync` restores the
whole live pool (replaying the day's push restores only that day's changes)."""

from __future__ import annotations

import datetime as dt
import json

import numpy as np
import redis
from materialize_helpers import daily_table, unit_rows, write_daily
from typer.testing import CliRunner

from derm_features.cli import app
from materialize.job import MaterializeConfig, materialize_day, push_online

DAY0, DAY1 = dt.date(2024, 3, 1), dt.date(2024, 3, 2)


def test_status_sees_an_emptied_redis_and_resync_restores_every_live_entity(
    applied_workdir, redis_url
):
    check_status_and_resync(applied_workdir, redis.Redis.from_url(redis_url).flushdb)


def test_status_and_resync_on_a_redis_cluster(cluster_workdir, redis_cluster):
    from redis.cluster import RedisCluster

    client = RedisCluster(host="127.0.0.1", port=redis_cluster[0])
    check_status_and_resync(
        cluster_workdir, lambda: client.flushall(target_nodes=RedisCluster.PRIMARIES)
    )


def check_status_and_resync(wd, empty_redis) -> None:
    """Materializes 40 users then a day of 3; `empty_redis()` loses them all; status sees
    it; replaying the day restores 3; `derm materialize --resync` all 40."""
    rng = np.random.default_rng(3)
    write_daily(wd, "ctr", "user", DAY0, daily_table(list(range(1, 41)), unit_rows(rng, 40), DAY0))
    write_daily(wd, "ctr", "user", DAY1, daily_table([1, 2, 3], unit_rows(rng, 3), DAY1))
    for day in (DAY0, DAY1):
        materialize_day(MaterializeConfig(wd, "ctr", "user", day, online=True))
    runner = CliRunner()
    status = ["status", "--workdir", str(wd.root), "--json"]

    def found():
        views = json.loads(runner.invoke(app, status).stdout)["views"]
        return next(v for v in views if (v["model"], v["entity"]) == ("ctr", "user"))[
            "online_found"
        ]

    assert found() == "40/40"
    empty_redis()  # Redis restarts without its data
    assert found() == "0/40"
    push_online(MaterializeConfig(wd, "ctr", "user", DAY1))  # the day's replay is not enough
    assert found() == "3/40"
    text = runner.invoke(app, ["status", "--workdir", str(wd.root)])
    assert "--resync" in text.output
    done = runner.invoke(
        app,
        ["materialize", "--workdir", str(wd.root), "--model", "ctr", "--entity", "user",
         "--date", DAY1.isoformat(), "--resync"],
    )  # fmt: skip
    assert done.exit_code == 0 and "re-synced 40 live entities" in done.output, done.output
    assert found() == "40/40"
    views = json.loads(runner.invoke(app, status).stdout)["views"]
    assert next(v for v in views if v["entity"] == "user" and v["model"] == "ctr")["live"] == 40
    # a damaged newest pool: status names it and the fix (exit 2), never a wrong count
    layout = wd.pool("ctr", "user", DAY1) / "_layout.json"
    layout.write_text(layout.read_text()[:40])
    damaged = runner.invoke(app, status)
    assert damaged.exit_code == 2 and "_layout.json is unreadable" in damaged.output
    assert "re-run `derm materialize` for its day" in damaged.output
