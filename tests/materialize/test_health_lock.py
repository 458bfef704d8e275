"""Entities materialized at once share the health table: every row survives."""

from __future__ import annotations

import datetime as dt
import multiprocessing

from materialize import health


def _record(metrics_dir, i: int) -> None:
    row = {f.name: None for f in health.HEALTH_SCHEMA}
    row |= {"model": "ctr", "entity": f"e{i}", "day": dt.date(2026, 1, 1)}
    for _ in range(5):  # several rounds widen the window a lost update would need
        health.record(metrics_dir, row)


def test_concurrent_records_keep_every_row(tmp_path):
    metrics = tmp_path / "metrics"
    ctx = multiprocessing.get_context("fork")
    procs = [ctx.Process(target=_record, args=(metrics, i)) for i in range(6)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
        assert p.exitcode == 0
    table = health.read_health(metrics)
    assert sorted(table["entity"].to_pylist()) == [f"e{i}" for i in range(6)]
    assert not list(metrics.glob(".tmp-*"))
