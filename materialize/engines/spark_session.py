"""A Spark session for the materializer: local and quiet by default, any master by config."""

from __future__ import annotations

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
    if master.startswith("local"):
        builder = builder.config("spark.driver.host", "127.0.0.1").config(
            "spark.driver.bindAddress", "127.0.0.1"
        )
    session = builder.getOrCreate()
    # The interpreter Spark starts for Python tasks (read from PYSPARK_PYTHON at start-up,
    # "python3" otherwise, which may lack pyarrow); set on the context, not the environment.
    session.sparkContext.pythonExec = sys.executable
    session.sparkContext.setLogLevel("ERROR")
    return session
