"""The root `derm` app: version, and `derm status` for schedulers."""

from __future__ import annotations

import json

from typer.testing import CliRunner

from derm_features import __version__
from derm_features.cli import app


def test_version():
    result = CliRunner().invoke(app, ["--version"])
    assert result.exit_code == 0 and result.output.strip() == f"derm {__version__}"


def test_status_json_and_a_mistyped_workdir(tmp_path):
    runner = CliRunner()
    result = runner.invoke(app, ["status", "--workdir", str(tmp_path / "typo")])
    assert result.exit_code == 2 and "no such work directory" in result.output
    (tmp_path / "wd").mkdir()
    result = runner.invoke(app, ["status", "--workdir", str(tmp_path / "wd"), "--json"])
    assert result.exit_code == 0, result.output
    body = json.loads(result.stdout)
    assert body["workdir"] == str(tmp_path / "wd")
    assert {(v["model"], v["entity"]) for v in body["views"]} == {
        (m, e) for m in ("ctr", "cvr") for e in ("user", "pin")
    }
    assert all(v["pool_days"] == [] and v["live"] is None for v in body["views"])


def test_log_level_filters_notices_and_never_touches_stdout(tmp_path, monkeypatch):
    """`derm status` with Redis unreachable warns on stderr; `--log-level error` keeps only
    failures there; stdout (the status table) is the same either way."""
    runner = CliRunner()
    wd = str(tmp_path / "wd")
    assert runner.invoke(app, ["apply", "--workdir", wd]).exit_code == 0
    monkeypatch.setenv("REDIS_URL", "redis://127.0.0.1:1")  # nothing listens on port 1
    default = runner.invoke(app, ["status", "--workdir", wd])
    quiet = runner.invoke(app, ["--log-level", "error", "status", "--workdir", wd])
    assert default.exit_code == quiet.exit_code == 0, default.output
    assert "warning: online: not checked" in default.stderr
    assert quiet.stderr == ""
    assert default.stdout == quiet.stdout and "work directory" in default.stdout
    bad = runner.invoke(app, ["--log-level", "loud", "status", "--workdir", wd])
    assert bad.exit_code == 2 and "Invalid value for '--log-level'" in bad.output
