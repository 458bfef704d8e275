"""Atomic writes: a reader sees the old state or the new one, never half of either.

Files are written to a temporary sibling and renamed; directories are built under a
hidden temporary sibling and renamed into place. An older copy of a directory (an
idempotent re-run) is swapped with the new one in one step where the OS can
(`_exchange`: Linux's renameat2 RENAME_EXCHANGE), so its path never stops naming a whole
copy; elsewhere it is moved aside first, and a crash between the two renames would leave
neither under the path. A crash leaves only ``.tmp-*`` siblings, which readers ignore and
the next run removes.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import functools
import os
import shutil
import uuid
from collections.abc import Iterator
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

_AT_FDCWD = -100  # <fcntl.h>: paths relative to the working directory
_RENAME_EXCHANGE = 2  # <linux/fs.h>


@functools.cache
def _renameat2():
    """glibc's renameat2 (2.28+), or None (another libc or OS)."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        call = libc.renameat2
    except (OSError, AttributeError):
        return None
    call.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    call.restype = ctypes.c_int
    return call


def _exchange(a: Path, b: Path) -> bool:
    """Swaps the names `a` and `b` (both existing) in one step: a reader of either path
    sees one of the two entries, never neither. False where the OS or the filesystem cannot
    (the caller then renames in two steps); raises OSError for any other failure."""
    call = _renameat2()
    if call is None:
        return False
    if call(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE) == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP):
        return False
    raise OSError(err, os.strerror(err), str(a), None, str(b))


def _tmp_sibling(path: Path) -> Path:
    return path.with_name(f".tmp-{path.name}-{uuid.uuid4().hex[:8]}")


def clean_stale_tmp(directory: Path) -> None:
    """Removes leftovers of crashed writes (``.tmp-*``) inside `directory`."""
    if directory.is_dir():
        for child in directory.glob(".tmp-*"):
            _remove(child)


def _remove(path: Path) -> None:
    """Removes a directory tree, a file or a symbolic link (a replaced path that was one:
    unlinked, never followed), if there."""
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


@contextlib.contextmanager
def atomic_dir(path: Path) -> Iterator[Path]:
    """Yields an empty temporary directory; on success it replaces `path` as a whole (an
    older copy swapped out in one step where the OS can, `_exchange`, then removed)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _tmp_sibling(path)
    tmp.mkdir()
    try:
        yield tmp
        if path.exists() and _exchange(tmp, path):
            _remove(tmp)  # the older copy, under tmp's name now
        elif path.exists():
            old = _tmp_sibling(path)
            os.rename(path, old)
            os.rename(tmp, path)
            _remove(old)
        else:
            os.rename(tmp, path)
    except BaseException:
        _remove(tmp)  # the new copy; or, after a swap, the older one
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
