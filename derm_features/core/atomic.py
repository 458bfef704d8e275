"""Atomic writes: a reader sees the old state or the new one, never half of either.

Files are written to a temporary sibling and renamed; directories are built under a
hidden temporary sibling and renamed into place (replacing an older copy, for idempotent
re-runs). A crash leaves only a ``.tmp-*`` sibling, which readers ignore and the next
run removes.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import uuid
from collections.abc import Iterator
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq


def _tmp_sibling(path: Path) -> Path:
    return path.with_name(f".tmp-{path.name}-{uuid.uuid4().hex[:8]}")


def clean_stale_tmp(directory: Path) -> None:
    """Removes leftovers of crashed writes (``.tmp-*``) inside `directory`."""
    if directory.is_dir():
        for child in directory.glob(".tmp-*"):
            shutil.rmtree(child, ignore_errors=True) if child.is_dir() else child.unlink(
                missing_ok=True
            )


@contextlib.contextmanager
def atomic_dir(path: Path) -> Iterator[Path]:
    """Yields an empty temporary directory; on success it replaces `path` as a whole."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _tmp_sibling(path)
    tmp.mkdir()
    try:
        yield tmp
        if path.exists():
            old = _tmp_sibling(path)
            os.rename(path, old)
            os.rename(tmp, path)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.rename(tmp, path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


@contextlib.contextmanager
def scratch_dir(parent: Path) -> Iterator[Path]:
    """Yields an empty temporary directory under `parent` for a run's intermediate files;
    it is removed when the block ends, on success or failure. A crash leaves a ``.tmp-*``
    directory there, which `clean_stale_tmp(parent)` removes."""
    parent = Path(parent)
    parent.mkdir(parents=True, exist_ok=True)
    tmp = parent / f".tmp-{uuid.uuid4().hex[:8]}"
    tmp.mkdir()
    try:
        yield tmp
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


@contextlib.contextmanager
def atomic_file(path: Path) -> Iterator[Path]:
    """Yields a temporary sibling of `path` to write; on success it replaces `path`
    atomically, on failure it is removed."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _tmp_sibling(path)
    try:
        yield tmp
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def write_parquet_atomic(table: pa.Table, path: Path, **kwargs) -> None:
    """Writes one Parquet file via a temporary sibling and an atomic rename."""
    with atomic_file(path) as tmp:
        pq.write_table(table, tmp, **kwargs)


def write_text_atomic(text: str, path: Path) -> None:
    write_bytes_atomic(text.encode(), path)


def write_bytes_atomic(data: bytes, path: Path) -> None:
    """Writes `data` to `path` via a temporary sibling and an atomic rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _tmp_sibling(path)
    try:
        tmp.write_bytes(data)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
