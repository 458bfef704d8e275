"""Offline sources: one Parquet directory per (model, entity) inside the work directory.

Each holds only the rows whose aggregated embedding changed that day, stamped at the end
of the day they include (DESIGN.md). Paths are absolute because DuckDB resolves relative
paths against the current directory, and `ParquetFormat()` is needed for a directory source.
"""

from feast import FileSource
from feast.data_format import ParquetFormat

from derm_features.workdir import Workdir, view_name

_workdir = Workdir.resolve()


def _embedding_source(model: str, entity: str) -> FileSource:
    return FileSource(
        name=f"{view_name(model, entity)}_source",
        path=str(_workdir.offline(model, entity)),
        file_format=ParquetFormat(),
        timestamp_field="event_timestamp",
        description=f"Daily changed rows of the {model} upstream model's {entity} embeddings.",
    )


ctr_user_source = _embedding_source("ctr", "user")
ctr_pin_source = _embedding_source("ctr", "pin")
cvr_user_source = _embedding_source("cvr", "user")
cvr_pin_source = _embedding_source("cvr", "pin")
