"""One engine interface: how pool(t-1) and day t's rows become pool(t) (paper appendix C).

Every engine runs the same pure kernel (`materialize.kernel.merge_day`) over the same hash
buckets of the entity id (`materialize.storage.bucket_of`) and hands the job the same
things (each bucket's changed rows as they are written, then the day's stats); they differ
only in where the buckets run. Like Feast's
`compute_engines/`, each engine has its own small config and the caller never branches on
the engine's type: it calls `make_engine(name, ...)` once and then `engine.merge(...)`.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from pathlib import Path

import pyarrow as pa

from materialize.kernel import KernelParams
from materialize.storage import ChangedRows, DailyInput

STATS_COLUMNS = ("status", "cosine", "norm", "degenerate", "last_seen")


class Engine(ABC):
    """Merges one (model, entity, day) into pool(t) under a temporary directory."""

    name: str
    # Whether `merge` reads day t split by bucket (`DailyInput.split`, spill files the job
    # writes while it validates the day); otherwise it reads `DailyInput.files` itself.
    reads_split_day: bool = True

    @abstractmethod
    def merge(
        self,
        previous_pool: Path | None,
        daily: DailyInput,
        params: KernelParams,
        dim: int,
        buckets: int,
        out_dir: Path,
        changed: ChangedRows,
        progress: Callable[[int], None] = lambda n: None,
    ) -> pa.Table:
        """Writes pool(t) as `buckets` bucket files plus its layout under `out_dir`.

        previous_pool: pool(t-1)'s directory (bucketed with `buckets`), or None for a new
        pool. daily: day t, validated (its files; split by bucket when
        `reads_split_day`). D = `dim`. Each bucket's changed rows (new and updated
        entities, sorted by id) are added to `changed` in bucket order (`ChangedRows.add`;
        the caller closes it), so the offline file can be written while later buckets
        merge. `progress(n)` is called as n more buckets are done. Returns the stats:
        `STATS_COLUMNS`, one row per entity of either input (folded: `health.fold_stats`).
        """
