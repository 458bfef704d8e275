"""Advisory locks in the work directory, so two runs never write the same state at once.

`derm daily`/`backfill` hold ``<workdir>/locks/pipeline.lock`` for the whole run and
`derm materialize` holds ``<workdir>/locks/<model>_<entity>.lock``: a second run over the
same state exits at once with a message naming the lock and the process holding it, instead
of deleting the first run's temporary files (two overlapping runs of one day used to leave a
pool with a whole bucket missing, both exiting 0). The kernel releases a lock when its
process dies, so a crash never leaves a stale lock behind.

Example:
    >>> with hold(Workdir(Path("/tmp/w")), "pipeline", "derm daily"):
    ...     pass  # the run
"""

from __future__ import annotations

import contextlib
import fcntl
import os
from collections.abc import Iterator
from pathlib import Path

from derm_features.core.workdir import Workdir


class LockHeld(RuntimeError):
    """Another run holds the lock; the message names the lock file and that run."""


def hold(workdir: Workdir, name: str, what: str, wait: bool = False):
    """Holds ``<workdir>/locks/<name>.lock`` while the block runs (a context manager).

    what: the run, as the other side's message names it (e.g. ``derm daily 2026-01-08``).
    wait: block until the lock is free (for short critical sections such as appending to a
    shared table) instead of raising LockHeld at once.
    """
    return hold_file(workdir.root / "locks" / f"{name}.lock", what, wait)


@contextlib.contextmanager
def hold_file(path: Path, what: str, wait: bool = False) -> Iterator[None]:
    """`hold` for a lock file at `path` (created if missing)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
        except BlockingIOError:
            handle.seek(0)
            holder = handle.read().strip() or "another process"
            raise LockHeld(
                f"{path} is held by {holder}: wait for it to finish (or stop it), then run "
                "this again; two runs over the same state would overwrite each other's files"
            ) from None
        handle.seek(0)
        handle.truncate()
        handle.write(f"{what} (pid {os.getpid()})")
        handle.flush()
        try:
            yield
        finally:
            handle.seek(0)
            handle.truncate()
            fcntl.flock(handle, fcntl.LOCK_UN)
