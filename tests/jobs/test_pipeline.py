"""The daily job: backfill, `derm daily` killed mid-run and resumed, `derm status`, derm.yaml."""

from __future__ import annotations

import datetime as dt
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

from derm_features.cli import app
from derm_features.commands.settings import ConfigError, load_config
from derm_features.core.workdir import Workdir, ds
from derm_features.jobs.pipeline import PipelineConfig, backfill, marker, status
from materialize.storage import offline_timestamp, read_pool

START = dt.date(2026, 1, 1)
SMALL_MODEL = {"embedding_dim": 16, "token_dim": 8, "num_buckets": 4096}
SMALL_TRAIN = {"batch_size": 512, "threads": 1}


@pytest.fixture(scope="module")
def small_log(tmp_path_factory) -> Path:
    from derm_features.synthetic import GenerateConfig, generate_logs

    out = tmp_path_factory.mktemp("pipeline_log")
    generate_logs(
        GenerateConfig(
            out=out,
            users=600,
            pins=200,
            days=5,
            start=START,
            seed=3,
            impressions_per_day=2500,
            progress=False,
        )
    )
    return out / "logs"


def _config(small_log: Path, workdir: Workdir, **overrides) -> PipelineConfig:
    fields = dict(models=("ctr",), window_days=3, seed=0, train=SMALL_TRAIN, model=SMALL_MODEL)
    return PipelineConfig(
        logs=small_log, workdir=workdir, progress=False, **{**fields, **overrides}
    )


def _status_of(workdir: Workdir, entity: str):
    return next(s for s in status(workdir) if s.model == "ctr" and s.entity == entity)


def test_daily_killed_during_materialization_resumes(small_log, applied_workdir, redis_url):
    wd = applied_workdir
    backfill(_config(small_log, wd), START, START + dt.timedelta(days=2))
    window_day = (START + dt.timedelta(days=2)).isoformat()
    assert _status_of(wd, "user").steps["materialized"] == [window_day]
    assert _status_of(wd, "pin").live > 0
    # The window fit back-infers each window day and folds them into the first pool: every
    # user of the window has an embedding, stamped at the end of the window's last day only.
    window = [START + dt.timedelta(days=i) for i in range(3)]
    seen = set().union(
        *(
            pq.read_table(small_log / ds(d), columns=["user_id"])["user_id"].to_pylist()
            for d in window
        )
    )
    pool = read_pool(wd.pool("ctr", "user", window[-1]), ["user_id"])
    assert set(pool["user_id"].to_pylist()) == seen
    offline = pq.read_table(wd.offline("ctr", "user"))
    assert set(offline["event_timestamp"].to_pylist()) == {offline_timestamp(window[-1])}

    # `derm daily` for the next day in a real process, killed as soon as the user pool is done
    day = START + dt.timedelta(days=3)
    config = wd.root / "derm.yaml"
    config.write_text(json.dumps({"model": SMALL_MODEL, "train": SMALL_TRAIN}))
    cmd = [
        os.path.join(os.path.dirname(sys.executable), "derm"),
        "daily",
        "--logs",
        str(small_log),
        "--date",
        day.isoformat(),
        "--workdir",
        str(wd.root),
        "--models",
        "ctr",
        "--config",
        str(config),
    ]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    user_marker = marker(wd, "ctr", "materialize_user", day)
    deadline = time.monotonic() + 300
    while not user_marker.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert user_marker.exists(), proc.stdout.read().decode()[-3000:]

    before = _status_of(wd, "user")
    assert before.steps["trained"][-1] == day.isoformat()
    assert before.steps["materialized"][-1] == day.isoformat()
    train_marker = marker(wd, "ctr", "train", day)
    trained_at = train_marker.stat().st_mtime_ns

    done = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    assert train_marker.stat().st_mtime_ns == trained_at, "a finished step must not run again"
    for entity in ("user", "pin"):
        after = _status_of(wd, entity)
        assert after.steps["materialized"] == [window_day, day.isoformat()]
        assert after.steps["online"] == [window_day, day.isoformat()]
        assert after.pool_days[-1] == day.isoformat()
        assert after.model_version.endswith(f"@{day.isoformat()}")
    assert marker(wd, "ctr", "index", day).exists()

    shown = subprocess.run(
        [cmd[0], "status", "--workdir", str(wd.root)], capture_output=True, text=True, check=True
    ).stdout
    assert f"{window_day}..{day.isoformat()} (2)" in shown


def test_model_without_positives_is_skipped_not_crashed(tmp_path, small_log, redis_url):
    """A log whose conversions are all unknown: the cvr model is skipped with a reason."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from derm_features.core.logs import open_log

    table = open_log(small_log).scanner(START, START + dt.timedelta(days=2)).to_table()
    table = table.set_column(
        table.schema.get_field_index("conversion"),
        "conversion",
        pa.nulls(table.num_rows, pa.int8()),
    )
    pq.write_table(table, tmp_path / "log.parquet")
    wd = Workdir(tmp_path / "wd")
    cfg = _config(tmp_path / "log.parquet", wd, models=("cvr",), online=False, index=False)
    result = backfill(cfg, START, START + dt.timedelta(days=2))
    train = result[str(START + dt.timedelta(days=2))]["cvr"]["train"]
    assert train["skipped"] is True
    assert "conversion" in train["reason"]
    assert not wd.checkpoints_dir("cvr").exists() or not any(wd.checkpoints_dir("cvr").iterdir())


def test_config_file_rejects_unknown_keys_naming_file_and_key(tmp_path):
    path = tmp_path / "derm.yaml"
    path.write_text("materialize:\n  heuristc: ma\n")
    with pytest.raises(ConfigError) as err:
        load_config(path)
    assert str(path) in str(err.value) and "heuristc" in str(err.value)
    path.write_text("model:\n  embedding_dim: 32\nmaterialize:\n  w: 0.5\n")
    assert load_config(path)["model"] == {"embedding_dim": 32}
    with pytest.raises(ConfigError, match="no such file"):
        load_config(tmp_path / "missing.yaml")


@pytest.mark.parametrize(
    ("train", "message"),
    [
        ("min_steps: abc", "train.min_steps must be an integer, got 'abc'"),
        ("max_epochs: 0", "train.max_epochs must be >= 1, got 0"),
        ("replay_days: -2", "train.replay_days must be >= 0, got -2"),
        ("lr: true", "train.lr must be a number, got True"),
    ],
)
def test_config_file_checks_train_values_before_any_work(tmp_path, train, message):
    path = tmp_path / "derm.yaml"
    path.write_text(f"train:\n  {train}\n")
    with pytest.raises(ConfigError) as err:
        load_config(path)
    assert str(err.value) == f"{path}: {message}"


def test_daily_refuses_a_bad_step_flag_before_any_work(small_log, tmp_path):
    wd = tmp_path / "wd"
    result = CliRunner().invoke(
        app,
        ["daily", "--logs", str(small_log), "--date", "2026-01-04", "--workdir", str(wd),
         "--max-epochs", "0"],
    )  # fmt: skip
    assert result.exit_code == 2 and "--max-epochs must be >= 1, got 0" in result.output
    assert not (wd / "steps").exists() and not (wd / "checkpoints").exists()


def test_backfill_refuses_days_missing_from_the_log(small_log, tmp_path):
    cfg = _config(small_log, Workdir(tmp_path / "wd"))
    with pytest.raises(ValueError, match="no impressions on 2026-01-06"):
        backfill(cfg, START, START + dt.timedelta(days=7))
