"""Offline sources: one Parquet directory per (model, entity) inside the work directory.

Each holds only the rows whose aggregated embedding changed that day, stamped at the end
of the day they include (DESIGN.md). Paths are absolute because DuckDB resolves relative
paths against the current directory, and `ParquetFormat()` is needed for a directory source.

Past one machine, Feast's Spark offline store reads the same directories, but it needs
SparkSource: ``DERM_OFFLINE_STORE=spark`` picks it here, and
``FEAST_FS_YAML_FILE_PATH=feature_store.spark.yaml`` (Feast's own variable) selects
``offline_store: type: spark``. Set both before `derm apply` and every later command.
"""

import os

from feast import FileSource
from feast.data_format import ParquetFormat

from derm_features.core.workdir import Workdir, view_name

_workdir = Workdir.resolve()


def _embedding_source(model: str, entity: str):
    name = f"{view_name(model, entity)}_source"
    path = str(_workdir.offline(model, entity))
    description = f"Daily changed rows of the {model} upstream model's {entity} embeddings."
    if os.environ.get("DERM_OFFLINE_STORE", "duckdb") == "spark":
        from feast.infra.offline_stores.contrib.spark_offline_store.spark_source import (
            SparkSource,
        )

        return SparkSource(
            name=name,
            path=path,
            file_format="parquet",
            timestamp_field="event_timestamp",
            description=description,
        )
    return FileSource(
        name=name,
        path=path,
        file_format=ParquetFormat(),
        timestamp_field="event_timestamp",
        description=description,
    )


ctr_user_source = _embedding_source("ctr", "user")
ctr_pin_source = _embedding_source("ctr", "pin")
cvr_user_source = _embedding_source("cvr", "user")
cvr_pin_source = _embedding_source("cvr", "pin")
