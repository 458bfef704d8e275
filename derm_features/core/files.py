"""Which files of a directory hold data: one rule for every reader of Parquet directories.

Logs, daily tower outputs, pools, Feast offline sources and training sets are all
directories of Parquet files, written by derm or by a team's own jobs (Spark, pandas,
Arrow). Every reader lists them with `parquet_files`, so each accepts the same layouts:

    logs/ds=2026-01-01/part-0.parquet        hive partitions, any depth
    logs/2026/01/part-0.parquet              plain nesting
    logs/_SUCCESS, logs/.part-0.parquet.crc  writer markers and checksums: skipped
    logs/_temporary/0/part-0.parquet         a Spark job still writing: skipped
    logs/.tmp-day=...-1a2b3c4d               a write in flight (`core.atomic`): skipped

Hidden names (a leading ``.`` or ``_``) are skipped at every depth, as Spark, Hive and Arrow
datasets do (pyarrow's ``ignore_prefixes`` default), so a half-written file is never read.
"""

from __future__ import annotations

from pathlib import Path

HIDDEN_PREFIXES = (".", "_")


def is_hidden(path: Path, root: Path) -> bool:
    """Whether any part of `path` below `root` starts with ``.`` or ``_``."""
    return any(part.startswith(HIDDEN_PREFIXES) for part in path.relative_to(root).parts)


def parquet_files(path: str | Path) -> list[Path]:
    """The data files of `path`: the file itself, or every ``*.parquet`` below a directory
    (any depth, hidden names skipped), sorted by path (`data_files` with ``.parquet``).

    Returns [] for a directory without data files; raises FileNotFoundError when `path`
    does not exist (callers turn both into their own error naming what was expected).

    >>> import tempfile
    >>> root = Path(tempfile.mkdtemp())
    >>> for name in ("ds=1/a.parquet", "_temporary/0/b.parquet", ".tmp-c.parquet", "_SUCCESS"):
    ...     (root / name).parent.mkdir(parents=True, exist_ok=True)
    ...     (root / name).touch()
    >>> [str(p.relative_to(root)) for p in parquet_files(root)]
    ['ds=1/a.parquet']
    """
    return data_files(path, ".parquet")


def data_files(path: str | Path, suffix: str) -> list[Path]:
    """`parquet_files` for files named ``*<suffix>`` (e.g. ``.arrow``: Arrow IPC files)."""
    path = Path(path)
    if path.is_file():
        return [path]
    if not path.is_dir():
        raise FileNotFoundError(f"{path}: no such file or directory")
    return sorted(p for p in path.rglob(f"*{suffix}") if p.is_file() and not is_hidden(p, path))
