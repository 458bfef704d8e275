"""Settings are checked before any work: flags, environment and derm.yaml, one precedence.

Every bad value exits 2 with one `error:` line naming the flag (or the file and key) and
leaves the work directory untouched; a flag left unset never overrides derm.yaml.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from derm_features.commands.settings import SettingsError, resolve_settings

DERM = os.path.join(os.path.dirname(sys.executable), "derm")


def derm(*args: str, cwd: Path, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [DERM, *args], cwd=cwd, capture_output=True, text=True, timeout=120,
        env={**os.environ, **(env or {})},
    )  # fmt: skip


def backfill_args(tmp_path: Path) -> list[str]:
    # The log does not even exist: nothing may be read before the settings are checked.
    return ["backfill", "--logs", str(tmp_path / "no-log"), "--start", "2026-01-01",
            "--end", "2026-01-05", "--workdir", str(tmp_path / "wd")]  # fmt: skip


@pytest.mark.parametrize(
    ("flags", "yaml", "message"),
    [
        (["--heuristic", "bogus"], None, "--heuristic: must be one of acc, ma, ap, got 'bogus'"),
        (["--w", "7"], None, "--w: must be a number from 0.0 to 1.0, got 7.0"),
        (["--ttl-days", "-1"], None, "--ttl-days: must be a whole number from 0 to 3650, got -1"),
        ([], "spec:\n  w: abc\n", "spec.w: must be a number from 0.0 to 1.0, got 'abc'"),
        ([], "materialize:\n  w: 7\n", "materialize.w: must be a number from 0.0 to 1.0, got 7"),
        ([], "materialize:\n  ttl_days: -3\n", "materialize.ttl_days: must be a whole number"),
        ([], "materialize:\n  engine: flink\n", "materialize.engine must be one of local, spark"),
        ([], "pipeline:\n  models: [ctr, ltv]\n", "unknown model(s) ['ltv']"),
        ([], "spec:\n  models: {ctr: click, 'Bad-Name': save}\n", "model name 'Bad-Name'"),
        (["--models", "ctr,ltv"], None, "--models: unknown model(s) ['ltv']"),
        (["--engine", "flink"], None, "--engine must be one of local, spark, got 'flink'"),
    ],
)
def test_backfill_refuses_bad_settings_before_any_work(tmp_path, flags, yaml, message):
    args = backfill_args(tmp_path) + flags
    if yaml is not None:
        config = tmp_path / "derm.yaml"
        config.write_text(yaml)
        args += ["--config", str(config)]
    done = derm(*args, cwd=tmp_path)
    assert done.returncode == 2, done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0], lines
    assert not (tmp_path / "wd").exists(), "nothing may be written"


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["materialize", "--model", "ltv", "--entity", "user", "--date", "2026-01-01"],
         "--model must be one of ctr, cvr, got 'ltv'"),
        (["materialize", "--model", "ctr", "--entity", "ad", "--date", "2026-01-01"],
         "--entity must be one of user, pin, got 'ad'"),
        (["train", "--model", "ltv", "--logs", "no-log"], "--model must be one of ctr, cvr"),
        (["infer", "--model", "ltv", "--logs", "no-log", "--date", "2026-01-01"],
         "--model must be one of ctr, cvr"),
        (["index", "--model", "ltv", "--date", "2026-01-01"], "--model must be one of ctr, cvr"),
        (["retrieve", "--model", "ltv", "--user", "1"], "--model must be one of ctr, cvr"),
    ],
)  # fmt: skip
def test_model_and_entity_flags_are_named_before_any_work(tmp_path, args, message):
    """A model the spec does not have, or an entity other than user and pin, is named as
    the flag (it was named as a library argument, after the command had imported Feast)."""
    done = derm(*args, "--workdir", str(tmp_path / "wd"), cwd=tmp_path)
    assert done.returncode == 2, done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0], lines
    assert not (tmp_path / "wd").exists(), "nothing may be written"


def test_a_model_added_in_derm_yaml_is_a_valid_model_flag(tmp_path):
    config = tmp_path / "derm.yaml"
    config.write_text("spec:\n  models: {ctr: click, save: save}\n")
    settings = resolve_settings(config, tmp_path / "wd", model="save", entity="pin")
    assert settings.spec.model_names == ("ctr", "save")
    with pytest.raises(SettingsError, match="--model must be one of ctr, save, got 'cvr'"):
        resolve_settings(config, tmp_path / "wd", model="cvr")


def test_derm_yaml_online_and_index_false_are_obeyed_unless_a_flag_says_otherwise(tmp_path):
    from derm_features.commands.pipeline import _pipeline_config

    config = tmp_path / "derm.yaml"
    config.write_text("materialize:\n  online: false\npipeline:\n  index: false\n")
    given = {"config": config, "workdir": tmp_path / "wd", "logs": tmp_path / "log",
             "online": None, "index": None}  # fmt: skip
    cfg = _pipeline_config(given)
    assert cfg.online is False and cfg.index is False
    cfg = _pipeline_config({**given, "online": True})
    assert cfg.online is True and cfg.index is False


def test_precedence_flag_then_environment_then_file_then_default(tmp_path, monkeypatch):
    config = tmp_path / "derm.yaml"
    config.write_text(
        "workdir: from-file\nredis_url: redis://file-host:6379/3\n"
        "spec:\n  w: 0.5\n  heuristic: ap\ntrain:\n  min_steps: 7\n"
    )
    monkeypatch.delenv("DERM_WORKDIR", raising=False)
    monkeypatch.delenv("REDIS_URL", raising=False)
    monkeypatch.chdir(tmp_path)
    s = resolve_settings(config)
    assert s.workdir.root == tmp_path / "from-file"
    assert s.workdir.redis_url == "redis://file-host:6379/3"
    assert (s.spec.w, s.spec.heuristic, s.train["min_steps"]) == (0.5, "ap", 7)
    monkeypatch.setenv("DERM_WORKDIR", str(tmp_path / "from-env"))
    monkeypatch.setenv("REDIS_URL", "redis://env-host:6379/4")
    s = resolve_settings(config, w=None, min_steps=None)  # unset flags change nothing
    assert s.workdir.root == tmp_path / "from-env"
    assert s.workdir.redis_url == "redis://env-host:6379/4"
    assert (s.spec.w, s.train["min_steps"]) == (0.5, 7)
    s = resolve_settings(config, tmp_path / "from-flag", w=0.9, min_steps=3)
    assert s.workdir.root == tmp_path / "from-flag"
    assert (s.spec.w, s.spec.heuristic, s.train["min_steps"]) == (0.9, "ap", 3)
    assert "DERM_WORKDIR" in os.environ and os.environ["DERM_WORKDIR"].endswith("from-env")


def test_no_default_config_means_the_default_spec(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    s = resolve_settings(None, tmp_path / "wd")
    assert s.spec.model_names == ("ctr", "cvr") and s.spec.ttl_days == 90
    with pytest.raises(SettingsError, match="no such file"):
        resolve_settings(tmp_path / "missing.yaml")


def test_library_calls_leave_the_environment_alone(tmp_path, monkeypatch, redis_url):
    """Two work directories in one process: neither changes DERM_WORKDIR or REDIS_URL."""
    from derm_features.core.workdir import Workdir
    from derm_features.feast.repo import apply, feature_store

    def ours():  # Feast itself sets PROMETHEUS_* on import of its metrics; not ours
        return {k: v for k, v in os.environ.items() if not k.startswith("PROMETHEUS_")}

    monkeypatch.setenv("DERM_WORKDIR", str(tmp_path / "env"))
    before = ours()
    a, b = Workdir(tmp_path / "a"), Workdir(tmp_path / "b")
    apply(a, quiet=True)
    apply(b, quiet=True)
    assert feature_store(a).config.registry.path == str(a.registry)
    assert feature_store(b).config.registry.path == str(b.registry)
    assert ours() == before
