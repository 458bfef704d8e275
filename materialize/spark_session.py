"""A Spark session for the materializer: local and quiet by default, any master by config."""

from __future__ import annotations

import os
import sys


def local_spark(master: str = "local[2]", shuffle_partitions: int = 4):
    """A SparkSession on `master` (``local[2]`` in tests; a cluster URL in production).

    Local mode binds loopback (`SPARK_LOCAL_IP`), runs Python workers on this interpreter
    (`PYSPARK_PYTHON`, so they find pyarrow), keeps the UI off and the logs at ERROR, and
    uses UTC so timestamps cross the Arrow boundary unchanged.
    """
    os.environ.setdefault("SPARK_LOCAL_IP", "127.0.0.1")
    os.environ["PYSPARK_PYTHON"] = sys.executable
    os.environ.setdefault("PYSPARK_DRIVER_PYTHON", sys.executable)
    from pyspark.sql import SparkSession

    session = (
        SparkSession.builder.master(master)
        .appName("derm-materialize")
        .config("spark.ui.enabled", "false")
        .config("spark.ui.showConsoleProgress", "false")
        .config("spark.sql.shuffle.partitions", str(shuffle_partitions))
        .config("spark.sql.session.timeZone", "UTC")
        .config("spark.sql.execution.arrow.pyspark.enabled", "true")
        .config("spark.driver.memory", os.environ.get("DERM_SPARK_DRIVER_MEMORY", "2g"))
        .getOrCreate()
    )
    session.sparkContext.setLogLevel("ERROR")
    return session
