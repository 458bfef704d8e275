"""A training set described twice: what to build, and what was built.

`TrainingSetConfig` says what to build (the log's days, the embeddings, the file format,
batch sizes); `TrainingSet` is a set as written (its folder and its ``meta.json``, read back
by `open_training_set`). Layout (DESIGN.md, "Work directory"):
``<workdir>/training_sets/<name>/ds=<day>/part-0.parquet`` (or ``.arrow``), one file a day,
with ``meta.json`` beside the partitions. Errors: TrainingSetError naming the field (a
config) or the missing file (a set).
"""

from __future__ import annotations

import datetime as dt
import json
from dataclasses import dataclass, field
from pathlib import Path

import pyarrow as pa
import pyarrow.dataset as pads
import pyarrow.fs as pafs

from derm_features.core.files import data_files
from derm_features.core.spec import DermSpec
from derm_features.core.workdir import Workdir
from trainers.downstream.training_set.names import (
    FILE_FORMATS,
    META_FILE,
    TrainingSetError,
    check_file_format,
    embedding_keys,
    embedding_view,
)


@dataclass(frozen=True)
class TrainingSetConfig:
    """One training set: the log days [start, end] joined with `embeddings` (keys)."""

    logs: Path
    workdir: Workdir | Path  # a Workdir carries its spec and Redis address
    start: dt.date
    end: dt.date
    embeddings: tuple[str, ...] | None = None  # None: every embedding of the spec
    name: str = ""
    # Days whose (entity, day) pairs go to Feast in one call: fewer calls (each one scans
    # the offline sources) against the memory of the pairs' embeddings.
    days_per_fetch: int = 7
    file_format: str = "parquet"  # one of FILE_FORMATS
    # Rows of a file's record batches (Parquet row groups). A writer gathers a batch's
    # vectors into buffers it reuses, just before writing them: a day's vectors are never
    # held whole (at D=256, 1M rows x 4 views is 4 GB), nor taken fresh from the OS (and
    # page-faulted in) day after day (BENCHMARKS.md, issue 15 target 3).
    batch_rows: int = 65_536

    @property
    def spec(self) -> DermSpec:
        return Workdir.resolve(self.workdir).spec

    def __post_init__(self) -> None:
        if self.end < self.start:
            raise TrainingSetError(f"the end day {self.end} is before the start day {self.start}")
        check_file_format(self.file_format, "training-set format")
        for name in ("batch_rows", "days_per_fetch"):
            if getattr(self, name) < 1:
                raise TrainingSetError(f"{name} must be at least 1, got {getattr(self, name)}")
        known = embedding_keys(self.spec)
        if self.embeddings is None:
            object.__setattr__(self, "embeddings", known)
        for key in self.embeddings:
            embedding_view(key)
            if key not in known:
                raise TrainingSetError(f"unknown embedding '{key}': expected one of {known}")

    @property
    def set_name(self) -> str:
        return self.name or (
            f"{self.start.isoformat()}_{self.end.isoformat()}_{'-'.join(self.embeddings) or 'none'}"
        )

    def output_dir(self) -> Path:
        return Workdir.resolve(self.workdir).training_set(self.set_name)


@dataclass(frozen=True)
class TrainingSet:
    """A written training set: where it is and what its meta.json says."""

    path: Path
    meta: dict = field(repr=False)

    @property
    def embeddings(self) -> tuple[str, ...]:
        return tuple(self.meta["embeddings"])

    def dim(self, key: str) -> int:
        return int(self.meta["embeddings"][key]["dim"])

    @property
    def file_format(self) -> str:
        """``parquet`` or ``arrow`` (sets written before the format was recorded: Parquet)."""
        return self.meta.get("format", "parquet")

    def files(self) -> list[Path]:
        """The set's data files, by day."""
        return data_files(self.path, FILE_FORMATS[self.file_format])

    def dataset(self) -> pads.Dataset:
        """The set's files as one dataset, memory-mapped: an Arrow set's columns are read
        without a copy (a set is only ever replaced whole, never truncated in place)."""
        files = [str(p) for p in self.files()]
        mapped = pafs.LocalFileSystem(use_mmap=True)
        return pads.dataset(files, format=self.file_format, filesystem=mapped)

    def read(self, columns: list[str] | None = None) -> pa.Table:
        return self.dataset().to_table(columns=columns)


def open_training_set(path: Path) -> TrainingSet:
    meta_path = Path(path) / META_FILE
    if not meta_path.is_file():
        raise TrainingSetError(f"{path} is not a training set: {META_FILE} is missing")
    return TrainingSet(Path(path), json.loads(meta_path.read_text()))
