"""The Spark engine on a real standalone cluster (a master and two workers on loopback,
started with pyspark's own launcher), run as a user runs it, `derm materialize --engine
spark --spark-master spark://...`: the same pool files, byte for byte, as the local engine."""

from __future__ import annotations

import datetime as dt
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import psutil
import pyarrow.parquet as pq
import pytest
from test_spark_engine import DAY, ENTITY, MODEL, _sorted, _write_days

from derm_features.core.workdir import Workdir
from materialize.engines.spark_session import standalone_cluster
from materialize.job import MaterializeConfig, materialize_offline
from materialize.storage import offline_day_path, read_pool

pytestmark = [pytest.mark.spark, pytest.mark.slow]
DERM = str(Path(sys.executable).with_name("derm"))


def materialize(wd: Workdir, day: dt.date, *flags: str) -> dict:
    done = subprocess.run(
        [DERM, "materialize", "--workdir", str(wd.root), "--model", MODEL, "--entity", ENTITY,
         "--date", day.isoformat(), "--heuristic", "ap", "--no-online", *flags],
        capture_output=True, text=True, timeout=600, env={**os.environ, "DERM_WORKDIR": ""},
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    return json.loads((wd.pool(MODEL, ENTITY, day) / "_layout.json").read_text())


def test_a_standalone_cluster_writes_the_local_engines_pool_byte_for_byte(tmp_path):
    base = Workdir(tmp_path / "base")
    _write_days(base)
    day1 = DAY + dt.timedelta(days=1)
    materialize_offline(
        MaterializeConfig(base, MODEL, ENTITY, DAY, heuristic="ap", online=False, buckets=2)
    )
    local, cluster = Workdir(tmp_path / "local"), Workdir(tmp_path / "cluster")
    for wd in (local, cluster):
        shutil.copytree(base.root, wd.root)
    layouts = {"local": materialize(local, day1)}
    with standalone_cluster(workers=2, work_dir=tmp_path / "spark") as master:
        # the master, the workers and their web UIs listen on loopback only
        cluster_processes = psutil.Process().children(recursive=True)
        listening = [
            c.laddr.ip
            for p in cluster_processes
            for c in p.net_connections(kind="tcp")
            if c.status == psutil.CONN_LISTEN
        ]
        assert len(listening) >= 3 and all(
            ip in ("127.0.0.1", "::ffff:127.0.0.1") for ip in listening
        ), listening
        layouts["cluster"] = materialize(
            cluster, day1, "--engine", "spark", "--spark-master", master
        )
        log = (tmp_path / "spark" / "cluster.log").read_text()
    # the job ran on the cluster: the master registered it and its workers ran executors
    assert "Registering app derm-materialize" in log, log[-2000:]
    # every bucket file has the local engine's size and crc32
    assert layouts["cluster"] == layouts["local"]
    assert layouts["local"]["buckets"] == 2 and len(layouts["local"]["files"]) == 2
    assert _sorted(read_pool(cluster.pool(MODEL, ENTITY, day1))).equals(
        _sorted(read_pool(local.pool(MODEL, ENTITY, day1)))
    )
    offline = [
        pq.read_table(offline_day_path(w.offline(MODEL, ENTITY), day1)) for w in (local, cluster)
    ]
    assert offline[0].num_rows == 100 and offline[0].equals(offline[1])
