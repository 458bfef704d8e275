"""A Spark session for the materializer: local and quiet by default, any master by config."""

from __future__ import annotations

import contextlib
import os
import sys


def local_spark(master: str = "local[2]", shuffle_partitions: int = 4):
    """A SparkSession on `master` (``local[2]`` in tests; a cluster URL in production).

    A local master binds loopback; Python workers run this interpreter (so they find
    pyarrow); the UI is off, the logs at ERROR, and the session time zone UTC so timestamps
    cross the Arrow boundary unchanged. All of it through Spark's own config: this process's
    environment is left alone. `DERM_SPARK_DRIVER_MEMORY` (default 2g) sizes the driver.
    """
    from pyspark.sql import SparkSession

    builder = (
        SparkSession.builder.master(master)
        .appName("derm-materialize")
        .config("spark.ui.enabled", "false")
        .config("spark.ui.showConsoleProgress", "false")
        .config("spark.sql.shuffle.partitions", str(shuffle_partitions))
        .config("spark.sql.session.timeZone", "UTC")
        .config("spark.sql.execution.arrow.pyspark.enabled", "true")
        .config("spark.pyspark.python", sys.executable)
        .config("spark.driver.memory", os.environ.get("DERM_SPARK_DRIVER_MEMORY", "2g"))
    )
    if master.startswith(("local", "spark://127.0.0.1:", "spark://localhost:")):
        # a driver on this machine, reached by executors of a loopback cluster too
        builder = builder.config("spark.driver.host", "127.0.0.1").config(
            "spark.driver.bindAddress", "127.0.0.1"
        )
    session = builder.getOrCreate()
    # The interpreter Spark starts for Python tasks (read from PYSPARK_PYTHON at start-up,
    # "python3" otherwise, which may lack pyarrow); set on the context, not the environment.
    session.sparkContext.pythonExec = sys.executable
    session.sparkContext.setLogLevel("ERROR")
    return session


@contextlib.contextmanager
def standalone_cluster(workers: int = 2, cores: int = 1, memory: str = "1g", work_dir=None):
    """A Spark standalone cluster on loopback: a master and `workers` workers started with
    the pip package's own launcher (``bin/spark-class ...deploy.master.Master`` / ``Worker``),
    for running the Spark engine against a real cluster on one machine (tests, benchmarks).

    Yields the master URL (``spark://127.0.0.1:<port>``) once every worker has registered;
    stops every process on exit. Raises RuntimeError, with the launcher's output, when the
    cluster does not come up within two minutes. Needs Java 17 (as pyspark does).
    """
    import shutil
    import socket
    import subprocess
    import tempfile
    import time
    from pathlib import Path

    import pyspark

    from derm_features.core.processes import stop_processes

    spark_class = Path(pyspark.__file__).parent / "bin" / "spark-class"

    def free_port() -> int:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            return s.getsockname()[1]

    own_dir = work_dir is None
    work = Path(work_dir or tempfile.mkdtemp(prefix="derm-spark-cluster-"))
    work.mkdir(parents=True, exist_ok=True)
    port = free_port()
    master = f"spark://127.0.0.1:{port}"
    # The launcher reads SPARK_HOME and the log directory from its environment: a child's
    # environment, this process's stays as it is.
    # SPARK_LOCAL_IP keeps the web UIs on loopback too (they bind 0.0.0.0 otherwise).
    env = {
        **os.environ,
        "SPARK_HOME": str(spark_class.parent.parent),
        "SPARK_LOG_DIR": str(work),
        "SPARK_LOCAL_IP": "127.0.0.1",
    }
    logs = open(work / "cluster.log", "ab")  # noqa: SIM115 - closed in finally
    processes = [
        subprocess.Popen(
            [str(spark_class), "org.apache.spark.deploy.master.Master", "--host", "127.0.0.1",
             "--port", str(port), "--webui-port", "0"],
            env=env, stdout=logs, stderr=subprocess.STDOUT,
        )
    ]  # fmt: skip
    try:
        for i in range(workers):
            processes.append(
                subprocess.Popen(
                    [str(spark_class), "org.apache.spark.deploy.worker.Worker", master,
                     "--host", "127.0.0.1", "--cores", str(cores), "--memory", memory,
                     "--webui-port", "0", "--work-dir", str(work / f"worker-{i}")],
                    env=env, stdout=logs, stderr=subprocess.STDOUT,
                )
            )  # fmt: skip
        # ready once the master has registered every worker (its own log says so; web UIs on
        # random ports, so no port picked here can be taken by another process meanwhile)
        deadline = time.monotonic() + 120
        while True:
            logs.flush()
            if (work / "cluster.log").read_text(errors="replace").count(
                "Registering worker"
            ) >= workers:
                break
            if time.monotonic() > deadline or any(p.poll() is not None for p in processes):
                logs.flush()
                raise RuntimeError(
                    f"the Spark standalone cluster did not come up:\n"
                    f"{(work / 'cluster.log').read_text()[-3000:]}"
                )
            time.sleep(0.5)
        yield master
    finally:
        stop_processes(reversed(processes))  # workers before the master
        logs.close()
        if own_dir:
            shutil.rmtree(work, ignore_errors=True)
