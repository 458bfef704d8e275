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
