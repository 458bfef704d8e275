"""Memory policy while a day is materialized: Arrow's freed memory goes back to the OS,
and NumPy's large arrays use small pages.

Arrow's default pool here (mimalloc) keeps the pages of freed buffers for reuse, and a
day's work frees a lot: each Parquet row group read or written, each bucket's tables.
Measured at 1M x 128 (4 buckets; `benchmarks/materialize_process.py`, BENCHMARKS.md),
the pages it kept added 0.2-0.25 GB to the peak RSS of `derm materialize`.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import numpy as np
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


@contextlib.contextmanager
def small_pages() -> Iterator[None]:
    """NumPy asks the kernel for transparent huge pages (`madvise(MADV_HUGEPAGE)`) on its
    large arrays; inside the block it does not, and after it does again. With the kernel's
    huge-page defrag on `madvise` (the common default), a fault in such an array may
    compact memory first and always zeroes 2 MB: a materialization allocates its output
    matrices bucket after bucket, and with the advice its kernel time varied by +-0.3 s on
    a 2 s run (1M x 128; runs alternated in BENCHMARKS.md). Process-wide, like
    `returning_memory_pool`; a NumPy without the switch (a private one) keeps its advice.
    """
    switch = getattr(np._core.multiarray, "_set_madvise_hugepage", None)
    if switch is None:
        yield
        return
    previous = switch(False)
    try:
        yield
    finally:
        switch(previous)
