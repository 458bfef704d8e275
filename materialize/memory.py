"""Arrow's memory pool while a day is materialized: freed memory goes back to the OS.

Arrow's default pool here (mimalloc) keeps the pages of freed buffers for reuse, and a
day's work frees a lot: each Parquet row group read or written, each bucket's tables.
Measured at 1M x 128 (4 buckets; `benchmarks/materialize_process.py`, BENCHMARKS.md),
the pages it kept added 0.2-0.25 GB to the peak RSS of `derm materialize`.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import pyarrow as pa

# jemalloc purges freed pages over this many milliseconds. Measured at 1M x 128, runs
# alternated: 100 ms costs no time against mimalloc; 0 (purge at every free) saved another
# ~0.06 GB of peak RSS and cost ~0.7 s of page faults on a 7 s run.
DECAY_MS = 100


@contextlib.contextmanager
def returning_memory_pool() -> Iterator[None]:
    """Arrow allocates from jemalloc with a short decay (`DECAY_MS`) inside the block and
    from the previous default pool after it; a build of pyarrow without jemalloc keeps
    its default pool. Buffers remember their pool, so a table made inside may outlive
    the block. Process-wide: other threads allocate from the same pool meanwhile, and
    jemalloc keeps the decay after the block.
    """
    try:
        pool = pa.jemalloc_memory_pool()
    except NotImplementedError:
        yield
        return
    previous = pa.default_memory_pool()
    pa.jemalloc_set_decay_ms(DECAY_MS)
    pa.set_memory_pool(pool)
    try:
        yield
    finally:
        pa.set_memory_pool(previous)
