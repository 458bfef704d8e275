"""Memory policy while a day is materialized: Arrow's freed memory goes back to the OS,
and NumPy's large arrays use small pages.

Arrow's default pool here (mimalloc) keeps the pages of freed buffers for reuse, and a
day's work frees a lot: each Parquet row group read or written, each bucket's tables.
Measured at 1M x 128 (4 buckets; `benchmarks/materialize_process.py`, BENCHMARKS.md),
the pages it kept added 0.2-0.25 GB to the peak RSS of `derm materialize`.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable, Iterator

import numpy as np
import pyarrow as pa

# jemalloc purges freed pages over this many milliseconds. Measured at 1M x 128, runs
# alternated: 100 ms costs no time against mimalloc; 0 (purge at every free) saved another
# ~0.06 GB of peak RSS and cost ~0.7 s of page faults on a 7 s run.
DECAY_MS = 100


class _ProcessSetting:
    """A process-wide setting held while any caller is inside the block: the first to
    enter sets it (`turn_on()` returns what it replaced), the last to leave restores it
    (`turn_off(replaced)`), however threads overlap (two days materialized at once by a
    library caller must not leave it set, nor lose it while one still runs)."""

    def __init__(self, turn_on: Callable[[], object], turn_off: Callable[[object], None]):
        self._turn_on, self._turn_off = turn_on, turn_off
        self._lock = threading.Lock()
        self._holders = 0
        self._replaced: object = None

    @contextlib.contextmanager
    def __call__(self) -> Iterator[None]:
        with self._lock:
            if self._holders == 0:
                self._replaced = self._turn_on()
            self._holders += 1
        try:
            yield
        finally:
            with self._lock:
                self._holders -= 1
                if self._holders == 0:
                    self._turn_off(self._replaced)


def _jemalloc_on() -> pa.MemoryPool | None:
    try:
        pool = pa.jemalloc_memory_pool()
    except NotImplementedError:
        return None
    previous = pa.default_memory_pool()
    pa.jemalloc_set_decay_ms(DECAY_MS)
    pa.set_memory_pool(pool)
    return previous


def _jemalloc_off(previous: pa.MemoryPool | None) -> None:
    if previous is not None:
        pa.set_memory_pool(previous)


_ARROW_POOL = _ProcessSetting(_jemalloc_on, _jemalloc_off)


def returning_memory_pool() -> contextlib.AbstractContextManager[None]:
    """Arrow allocates from jemalloc with a short decay (`DECAY_MS`) inside the block and
    from the previous default pool after it; a build of pyarrow without jemalloc keeps
    its default pool. Buffers remember their pool, so a table made inside may outlive
    the block. Process-wide (`_ProcessSetting`): other threads allocate from the same pool
    meanwhile, and jemalloc keeps the decay after the block.
    """
    return _ARROW_POOL()


# NumPy's switch of its huge-page advice (private; returns the setting it replaces).
_HUGEPAGE_SWITCH = getattr(np._core.multiarray, "_set_madvise_hugepage", None)
_SMALL_PAGES = _ProcessSetting(
    lambda: _HUGEPAGE_SWITCH(False) if _HUGEPAGE_SWITCH else None,
    lambda previous: _HUGEPAGE_SWITCH(previous) if _HUGEPAGE_SWITCH else None,
)


def small_pages() -> contextlib.AbstractContextManager[None]:
    """NumPy asks the kernel for transparent huge pages (`madvise(MADV_HUGEPAGE)`) on its
    large arrays; inside the block it does not, and after it does again. With the kernel's
    huge-page defrag on `madvise` (the common default), a fault in such an array may
    compact memory first and always zeroes 2 MB: a materialization allocates its output
    matrices bucket after bucket, and with the advice its kernel time varied by +-0.3 s on
    a 2 s run (1M x 128; runs alternated in BENCHMARKS.md). Process-wide, like
    `returning_memory_pool`; a NumPy without the switch (a private one) keeps its advice.
    """
    return _SMALL_PAGES()
