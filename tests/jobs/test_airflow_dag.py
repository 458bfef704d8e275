"""The example Airflow DAG (scripts/airflow/derm_daily_dag.py), checked without Airflow.

A light stand-in for the three Airflow names the DAG uses records what it declares; each
task's command, rendered for a day, must parse with derm's own CLI, and the validation
task runs for real on a log.
"""

from __future__ import annotations

import datetime as dt
import importlib.util
import shlex
import sys
import types

import pytest
from typer.testing import CliRunner

from derm_features.cli import app
from derm_features.core.workdir import Workdir
from derm_features.feast.repo import REPO_ROOT

DAG_FILE = REPO_ROOT / "scripts" / "airflow" / "derm_daily_dag.py"


class _Dag:
    def __init__(self, **kwargs):
        self.kwargs, self.tasks = kwargs, []

    def __enter__(self):
        _Dag.current = self
        return self

    def __exit__(self, *exc):
        _Dag.current = None


class _BashOperator:
    def __init__(self, task_id: str, bash_command: str, **kwargs):
        self.task_id, self.bash_command, self.kwargs = task_id, bash_command, kwargs
        self.downstream: list[_BashOperator] = []
        _Dag.current.tasks.append(self)

    def __rshift__(self, other):
        self.downstream.append(other)
        return other


@pytest.fixture
def dag(monkeypatch):
    airflow = types.ModuleType("airflow")
    airflow.DAG = _Dag
    operators = types.ModuleType("airflow.operators")
    bash = types.ModuleType("airflow.operators.bash")
    bash.BashOperator = _BashOperator
    for name, module in (
        ("airflow", airflow),
        ("airflow.operators", operators),
        ("airflow.operators.bash", bash),
    ):
        monkeypatch.setitem(sys.modules, name, module)
    spec = importlib.util.spec_from_file_location("derm_daily_dag", DAG_FILE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def rendered(task, day: dt.date, **paths) -> list[str]:
    command = task.bash_command.replace("{{ ds }}", day.isoformat())
    for old, new in paths.items():
        command = command.replace(old, new)
    args = shlex.split(command)
    assert args[0] == "derm"
    return args[1:]


def test_the_dag_runs_days_in_order_one_at_a_time(dag):
    d = dag.dag
    assert d.kwargs["dag_id"] == "derm_daily"
    assert d.kwargs["max_active_runs"] == 1 and d.kwargs["catchup"] is True
    assert d.kwargs["default_args"]["depends_on_past"] is True
    validate, daily = d.tasks
    assert (validate.task_id, daily.task_id) == ("validate_logs", "daily")
    assert validate.downstream == [daily] and validate.kwargs["retries"] == 0


def test_every_command_parses_and_validation_runs_on_a_real_log(dag, tmp_path):
    from derm_features.synthetic import GenerateConfig, generate_logs

    day = dt.date(2026, 1, 1)
    generate_logs(
        GenerateConfig(out=tmp_path, users=200, pins=50, days=1, impressions_per_day=500,
                       progress=False)
    )  # fmt: skip
    paths = {dag.LOGS: str(Workdir(tmp_path).logs), f"--config {dag.CONFIG}": ""}
    runner = CliRunner()
    validate, daily = dag.dag.tasks
    result = runner.invoke(app, rendered(validate, day, **paths))
    assert result.exit_code == 0, result.output
    # the daily job itself trains for minutes: its flags are checked by the parser, which
    # stops at an unknown option or a bad value before --help
    result = runner.invoke(app, [*rendered(daily, day, **paths), "--help"])
    assert result.exit_code == 0, result.output
    assert "--allow-gap" in result.output  # daily's own help: every flag before it parsed
    broken = runner.invoke(app, [*rendered(daily, day, **paths), "--no-such-flag", "--help"])
    assert broken.exit_code == 2
