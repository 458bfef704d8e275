"""The daily job refuses what cannot succeed before it trains, and says what it skipped.

Fresh work directory -> the Feast views are registered; Redis down -> one line, exit 3;
a day missing before the one asked for -> exit 2 unless --allow-gap; a second run on the
same work directory -> exit 4; a changed log is reported and --force recomputes.
"""

from __future__ import annotations

import datetime as dt
import os
import subprocess
import sys
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from derm_features.core.locks import LockHeld, hold
from derm_features.core.workdir import Workdir
from derm_features.jobs.pipeline import (
    GapError,
    PipelineConfig,
    _stepper,
    check_no_gap,
    log_fingerprint,
    marker,
    prepare,
    run_step,
)

DERM = os.path.join(os.path.dirname(sys.executable), "derm")
DAY = dt.date(2026, 1, 10)


@pytest.fixture
def tiny_log(tmp_path) -> Path:
    """Three days of a log with the contract's required columns only."""
    root = tmp_path / "logs"
    for i in range(3):
        day = DAY - dt.timedelta(days=2 - i)
        part = root / f"ds={day.isoformat()}" / "part-0.parquet"
        part.parent.mkdir(parents=True)
        ts = dt.datetime.combine(day, dt.time(12), dt.UTC)
        pq.write_table(
            pa.table({
                "user_id": pa.array([1, 2], pa.int64()), "pin_id": pa.array([7, 8], pa.int64()),
                "ts": pa.array([ts, ts], pa.timestamp("us", "UTC")),
                "click": pa.array([1, 0], pa.int8()), "conversion": pa.array([0, None], pa.int8()),
            }),
            part,
        )  # fmt: skip
    return root


def config(log: Path, wd: Workdir, **kw) -> PipelineConfig:
    return PipelineConfig(logs=log, workdir=wd, progress=False, **kw)


def test_prepare_registers_the_views_of_a_fresh_work_directory(tiny_log, tmp_path, redis_url):
    from derm_features.feast.repo import feature_store

    wd = Workdir(tmp_path / "wd")
    prepare(config(tiny_log, wd, online=True))
    views = {v.name for v in feature_store(wd).list_feature_views()}
    assert views == {v for _, _, v in wd.spec.views()}
    prepare(config(tiny_log, wd, online=True))  # idempotent


def test_daily_with_redis_down_exits_3_before_training(tiny_log, tmp_path):
    wd = tmp_path / "wd"
    done = subprocess.run(
        [DERM, "daily", "--logs", str(tiny_log), "--date", DAY.isoformat(), "--workdir", str(wd)],
        capture_output=True, text=True, timeout=120,
        env={**os.environ, "REDIS_URL": "redis://127.0.0.1:1/0"},
    )  # fmt: skip
    assert done.returncode == 3, done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and "redis://127.0.0.1:1/0" in lines[0], lines
    assert f"re-run `derm daily --date {DAY}`" in lines[0]
    assert not (wd / "checkpoints").exists() and not (wd / "steps").exists()


def test_a_day_after_a_missing_day_is_refused_unless_allowed(tiny_log, tmp_path):
    wd = Workdir(tmp_path / "wd")
    for entity in ("user", "pin"):
        (wd.pool("ctr", entity, DAY - dt.timedelta(days=3))).mkdir(parents=True)
    cfg = config(tiny_log, wd, models=("ctr",))
    with pytest.raises(GapError, match=r"pool ends on 2026-01-07, but 2026-01-08\.\.2026-01-09"):
        check_no_gap(cfg, DAY)
    check_no_gap(config(tiny_log, wd, models=("ctr",), allow_gap=True), DAY)
    # a day the model was skipped on (no positives) is not a gap
    for d in (DAY - dt.timedelta(days=2), DAY - dt.timedelta(days=1)):
        path = marker(wd, "ctr", "train", d)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text('{"skipped": true}')
    check_no_gap(cfg, DAY)


def test_the_gap_is_refused_by_the_cli_with_exit_2(tiny_log, tmp_path):
    wd = Workdir(tmp_path / "wd")
    (wd.pool("ctr", "user", DAY - dt.timedelta(days=3))).mkdir(parents=True)
    done = subprocess.run(
        [DERM, "daily", "--logs", str(tiny_log), "--date", DAY.isoformat(), "--workdir",
         str(wd.root), "--no-online", "--models", "ctr"],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert done.returncode == 2 and "--allow-gap" in done.stderr, done.stderr
    assert not (wd.root / "steps").exists()


def test_a_second_run_on_the_same_work_directory_exits_4(tiny_log, tmp_path):
    wd = Workdir(tmp_path / "wd")
    with hold(wd, "pipeline", "derm daily 2026-01-10"):
        with pytest.raises(LockHeld, match="derm daily 2026-01-10"), hold(wd, "pipeline", "x"):
            pass
        done = subprocess.run(
            [DERM, "daily", "--logs", str(tiny_log), "--date", DAY.isoformat(), "--workdir",
             str(wd.root), "--no-online"],
            capture_output=True, text=True, timeout=120,
        )  # fmt: skip
    assert done.returncode == 4, done.stderr
    assert f"pid {os.getpid()}" in done.stderr and "pipeline.lock" in done.stderr
    assert not (wd.root / "steps").exists()
    with hold(wd, "pipeline", "after"):  # released with its holder
        pass


def test_a_changed_log_is_reported_and_force_recomputes(tiny_log, tmp_path, caplog, monkeypatch):
    caplog.set_level("INFO", logger="derm")
    from derm_features.core.logs import open_log

    wd = Workdir(tmp_path / "wd")
    before = log_fingerprint(open_log(tiny_log), DAY)
    # the same log spelled another way (relative to the working directory) is the same input
    monkeypatch.chdir(tiny_log.parent)
    assert log_fingerprint(open_log(tiny_log.name), DAY) == before
    runs = []

    def work():
        runs.append(1)
        return {"n": len(runs)}

    assert run_step(wd, "ctr", "train", DAY, work, before) == ({"n": 1, "inputs": before}, True)
    part = tiny_log / f"ds={DAY.isoformat()}" / "part-0.parquet"
    pq.write_table(pq.read_table(part).slice(0, 1), part)  # the day's log is corrected
    after = log_fingerprint(open_log(tiny_log), DAY)
    assert after != before
    assert log_fingerprint(open_log(tiny_log), DAY - dt.timedelta(days=1)) != after
    summary, ran = run_step(wd, "ctr", "train", DAY, work, after)
    assert not ran and summary["n"] == 1
    assert "its input changed since it ran" in caplog.text
    summary, ran = run_step(wd, "ctr", "train", DAY, work, after, force=True)
    assert ran and summary == {"n": 2, "inputs": after}


def test_skipped_steps_say_so_in_one_line(tiny_log, tmp_path, caplog):
    caplog.set_level("INFO", logger="derm")
    wd = Workdir(tmp_path / "wd")
    cfg = config(tiny_log, wd)
    for _ in range(2):
        step = _stepper(cfg, "ctr", DAY, "f")
        step("train", lambda: {})
        step("infer", lambda: {})
        step.report()
    assert [r.getMessage() for r in caplog.records if r.name.startswith("derm")] == [
        "2026-01-10 ctr: train, infer already done (skipped; `derm daily --force` recomputes a day)"
    ]


def test_force_redoes_only_the_newest_day(tiny_log, tmp_path):
    from derm_features.jobs.pipeline import check_force

    wd = Workdir(tmp_path / "wd")
    (wd.pool("ctr", "pin", DAY)).mkdir(parents=True)
    check_force(config(tiny_log, wd, models=("ctr",), force=True), DAY)  # the newest: fine
    with pytest.raises(ValueError, match="--force recomputes only the newest day"):
        check_force(config(tiny_log, wd, models=("ctr",), force=True), DAY - dt.timedelta(days=1))
    check_force(config(tiny_log, wd, models=("ctr",)), DAY - dt.timedelta(days=1))  # no force


def test_progress_follows_the_flag_else_whether_stderr_is_a_terminal(tmp_path, monkeypatch):
    import io
    import sys

    from derm_features.commands.pipeline import _pipeline_config

    given = {"config": None, "workdir": tmp_path / "wd", "logs": tmp_path / "log"}
    assert _pipeline_config({**given, "progress": False}).progress is False
    assert _pipeline_config({**given, "progress": True}).progress is True
    monkeypatch.setattr(sys, "stderr", io.StringIO())  # a scheduler's log file
    assert _pipeline_config({**given, "progress": None}).progress is False

    class Terminal(io.StringIO):
        def isatty(self) -> bool:
            return True

    monkeypatch.setattr(sys, "stderr", Terminal())
    assert _pipeline_config(given).progress is True
