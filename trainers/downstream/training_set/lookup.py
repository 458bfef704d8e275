"""`Lookup`: what a point-in-time join answers, one entry per distinct (day, id) pair.

All events of one day share one cut (`names.lookup_time`), so the embedding of an event
depends only on its (entity id, day) (DESIGN.md, "Point-in-time rule"): the join is asked
about the distinct pairs (`distinct_pairs`), and each log row then finds its pair
(`Lookup.rows_of`) and copies its vector from there (`Lookup.gather`). Shapes: P pairs,
M vectors of D floats that the pairs point into.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field

import numpy as np

from trainers.downstream.training_set.names import cut_micros


@dataclass(frozen=True)
class Lookup:
    """Where the embeddings of distinct (day, id) pairs are, pairs sorted by day then id.

    Per key, the pairs point into a matrix of vectors rather than holding copies: with
    derm's own join that matrix is the view's offline rows as read (no [P, D] copy of the
    pairs' vectors is ever made); with Feast's it is Feast's result, one row per pair. The
    training-set rows are then gathered from it once, straight into their output column.
    """

    cuts: np.ndarray  # [P] int64 microseconds (lookup_time of the pair's day)
    ids: np.ndarray  # [P] int64
    vectors: dict[str, np.ndarray]  # key -> [M, D] float32 the pairs point into
    rows: dict[str, np.ndarray]  # key -> [P] int64, each pair's row of vectors[key]; -1: none

    # day -> (its row ids when the pairs were made, their pair indices): the day's rows
    # read again in the same order need no search
    known: dict[dt.date, tuple[np.ndarray, np.ndarray]] = field(default_factory=dict)

    def rows_of(self, day: dt.date, row_ids: np.ndarray) -> np.ndarray:
        """Pair index of each (day, row id); every row id must be among the day's pairs."""
        ids, pairs = self.known.get(day, (None, None))
        if ids is not None and np.array_equal(ids, row_ids):
            return pairs
        lo, hi = np.searchsorted(self.cuts, [cut_micros(day), cut_micros(day) + 1])
        return lo + np.searchsorted(self.ids[lo:hi], row_ids)

    def gather(
        self, key: str, pairs: np.ndarray, out: np.ndarray | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """The vectors of `pairs` ([n] pair indices): ([n, D] float32, zeros where there is
        none; [n] bool, whether there is one). One pass over the output bytes.

        `out`: an [n, D] float32 C-contiguous matrix to write them into (and return), e.g.
        one of `OutputBuffers`; None allocates one.
        """
        source, rows = self.vectors[key], self.rows[key][pairs]
        present = rows >= 0
        if out is None:
            out = np.empty((len(pairs), source.shape[1]), np.float32)
        if not len(source):  # nothing to point into: every row is absent
            out[:] = 0.0
            return out, present
        # mode="clip": the default buffers `out` (2x slower); -1 reads row 0, zeroed just after
        np.take(source, rows, axis=0, out=out, mode="clip")
        if not present.all():
            out[~present] = 0.0
        return out, present


def distinct_pairs(
    ids_by_day: dict[dt.date, np.ndarray],
) -> tuple[np.ndarray, np.ndarray, dict[dt.date, tuple[np.ndarray, np.ndarray]]]:
    """(cuts, ids) of the distinct (day, id) pairs, sorted by day then id, and per day
    (its ids as given, the pair index of each): what `Lookup.rows_of` would compute."""
    cuts, uniques, known, start = [], [], {}, 0
    for day in sorted(ids_by_day):
        unique, inverse = np.unique(ids_by_day[day], return_inverse=True)
        cuts.append(np.full(len(unique), cut_micros(day), np.int64))
        uniques.append(unique.astype(np.int64))
        known[day] = (ids_by_day[day], start + inverse)
        start += len(unique)
    return np.concatenate(cuts), np.concatenate(uniques), known
