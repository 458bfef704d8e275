"""An Airflow DAG for derm's daily job: copy it into your DAGs folder and set the paths below.

One run per day D (Airflow's ``ds``, the start of the run's interval, so D's log is
complete when it runs): check D's log against the contract, then ``derm daily`` for D
(train, infer, materialize, push to Redis, Pin index). The same as the cron line in the
README, with retries and a history.

- Days run in order, one at a time (``depends_on_past``, ``max_active_runs=1``): derm
  refuses a day whose previous day was never materialized (exit 2) and holds a lock per
  work directory (exit 4). ``catchup=True`` fills missed days oldest first.
- Exit codes: 2 bad input (the log or a setting: fix it, a retry will not help),
  3 Redis unreachable (a retry helps once Redis is back; the offline part is kept),
  4 another run holds the lock (a retry helps).
- stdout carries each command's JSON result (Airflow's log shows it); notices go to
  stderr at ``--log-level warning``; progress bars are off (``--no-progress``).

Checked by ``tests/jobs/test_airflow_dag.py`` without Airflow installed: every command
parses with derm's CLI, and the validation step runs on a real log.
"""

from __future__ import annotations

import datetime as dt

from airflow import DAG
from airflow.operators.bash import BashOperator  # Airflow 3: airflow.providers.standard...

DERM = "derm --log-level warning"
CONFIG = "/etc/derm/derm.yaml"  # the DERM spec and settings (README, "The DERM spec")
WORKDIR = "/data/derm"  # derm's work directory (pools, offline rows, registry)
LOGS = "/data/logs"  # the ad log, partitioned by day: /data/logs/ds=YYYY-MM-DD/*.parquet
DAY = "{{ ds }}"

with DAG(
    dag_id="derm_daily",
    schedule="15 2 * * *",  # 02:15 UTC, after the day's log has landed
    start_date=dt.datetime(2026, 1, 1, tzinfo=dt.UTC),
    catchup=True,
    max_active_runs=1,
    default_args={
        "depends_on_past": True,
        "retries": 3,
        "retry_delay": dt.timedelta(minutes=10),
    },
    tags=["derm", "feast"],
) as dag:
    validate = BashOperator(
        task_id="validate_logs",
        bash_command=f"{DERM} validate-logs --config {CONFIG} {LOGS}/ds={DAY}",
        retries=0,  # a log that breaks the contract stays broken
    )
    daily = BashOperator(
        task_id="daily",
        bash_command=(
            f"{DERM} daily --config {CONFIG} --workdir {WORKDIR} --logs {LOGS} "
            f"--date {DAY} --no-progress"
        ),
    )
    validate >> daily
