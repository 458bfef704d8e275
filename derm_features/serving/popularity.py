"""Pin popularity for retrieval, and the fit of its weight beta (issue 11, point 5).

The upstream model's in-batch softmax subtracts log Q(p) (paper 3.1; Yi et al. 2019), so
u.p ranks Pins with their popularity removed: good for learning, a handicap for retrieving
what a user will click tomorrow, where popular Pins are clicked more. The retrieval score
adds it back:

    score(u, p) = cos(u, p) + beta * log_popularity(p),
    log_popularity(p) = log(1 + positives of p over the `days` days ending at the index day)

Why positive-label counts from the log (clicks for ctr, conversions for cvr), not the
snapshot's frequency estimator log Q: Q counts appearances in training batches, that is
impressions, which the ad server's budgets and pacing decide, while retrieval is asked for
the Pins a user will act on; counts over a fixed window are also simple to explain,
reproduce and recompute for any day, and do not depend on the estimator's hashing or step
clock. The +1 keeps unclicked Pins at 0 (no bonus) rather than -inf.

beta is fitted by a grid search maximising recall@k on a validation day V = the index day D,
shifted back one day so nothing after D is used and the index day's own embeddings are not
scored on rows they were trained on: users and Pins from the pools of D - 1, popularity over
the `days` days ending at D - 1, targets the Pins each user acts on during D. The index of D
then serves D + 1 with popularity through D, the same setting one day later; recall reported
on D + 1 (benchmarks/retrieval.py) is never seen by the fit.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

# A small grid: cosines lie in [-1, 1] and log-counts in [0, ~10], so beta around 0.01-1
# moves the ranking; 10 is popularity order with cosine as tie-break.
BETA_GRID = (0.0, 0.005, 0.01, 0.02, 0.03, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.5, 1.0, 10.0)


@dataclass(frozen=True)
class Positives:
    """Positive (user, Pin) rows of a day range, ids as the pools hold them (int64)."""

    user_ids: np.ndarray  # [n] int64
    pin_ids: np.ndarray  # [n] int64

    def pin_counts(self) -> tuple[np.ndarray, np.ndarray]:
        """(distinct pin ids [m], positives of each [m])."""
        return np.unique(self.pin_ids, return_counts=True)

    def by_user(self) -> dict[int, np.ndarray]:
        """user id -> the distinct Pins they acted on."""
        order = np.lexsort((self.pin_ids, self.user_ids))
        users, pins = self.user_ids[order], self.pin_ids[order]
        cuts = np.flatnonzero(np.diff(users)) + 1
        return {
            int(u[0]): np.unique(p)
            for u, p in zip(np.split(users, cuts), np.split(pins, cuts), strict=True)
            if len(u)
        }


def read_positives(logs: Path, label: str, start: dt.date, end: dt.date) -> Positives:
    """Rows of `logs` with start <= day(ts) <= end whose `label` column is 1 (the upstream
    model's SSL positives: `DermSpec.label(model)`).

    String ids are hashed as the upstream trainer hashes them (`hash_ids_to_int64`), so the
    ids match the pools'. Raises LogContractError for a missing or malformed log and
    ValueError for a label column the log lacks.
    """
    from derm_features.core.ids import hash_ids_to_int64
    from derm_features.core.logs import open_log

    log = open_log(logs, check_values=False, labels=(label,))
    if label not in log.columns():
        raise ValueError(f"{logs}: no label column '{label}'")
    table = log.scanner(start, end, columns=["user_id", "pin_id", label]).to_table()
    table = table.filter(pc.equal(table[label], pa.scalar(1, table[label].type)))
    return Positives(hash_ids_to_int64(table["user_id"]), hash_ids_to_int64(table["pin_id"]))


def log_popularity(pin_ids: np.ndarray, positives: Positives) -> np.ndarray:
    """log(1 + count) [len(pin_ids)] float32 of each Pin's positives; 0 for a Pin without."""
    pin_ids = np.asarray(pin_ids, dtype=np.int64)
    ids, counts = positives.pin_counts()
    if not len(ids):
        return np.zeros(len(pin_ids), np.float32)
    where = np.minimum(np.searchsorted(ids, pin_ids), len(ids) - 1)
    count = np.where(ids[where] == pin_ids, counts[where], 0)
    return np.log1p(count).astype(np.float32)


def window(day: dt.date, days: int) -> tuple[dt.date, dt.date]:
    """The `days` days ending at `day` (both inclusive)."""
    if days < 1:
        raise ValueError(f"popularity days must be >= 1, got {days}")
    return day - dt.timedelta(days=days - 1), day


def recall_per_user(
    users: np.ndarray,
    pins: np.ndarray,
    log_pop: np.ndarray,
    targets: list[np.ndarray],
    beta: float,
    k: int,
    chunk: int = 1024,
) -> np.ndarray:
    """Recall@k [n] of each user's targets under score = users @ pins.T + beta * log_pop.

    Args:
        users (np.ndarray): [n, D] unit user vectors.
        pins (np.ndarray): [m, D] unit Pin vectors.
        log_pop (np.ndarray): [m] log-popularity of each Pin.
        targets (list[np.ndarray]): n arrays of Pin rows (into `pins`) each user acted on,
            -1 for a Pin outside `pins` (never hit, still counted); a user's recall is
            |top-k & targets| / |targets|, 0 for an empty target list.
        beta (float): the popularity weight.
        k (int): the cut-off (>= 1; all Pins when k >= m).
    """
    k_eff = min(k, len(pins))
    out = np.zeros(len(users))
    for lo in range(0, len(users), chunk):
        scores = users[lo : lo + chunk] @ pins.T + beta * log_pop[None, :]
        top = np.argpartition(-scores, k_eff - 1, axis=1)[:, :k_eff]
        for r, row in enumerate(top):
            t = targets[lo + r]
            out[lo + r] = np.isin(t, row).sum() / len(t) if len(t) else 0.0
    return out


def fit_beta(
    users: np.ndarray,
    pins: np.ndarray,
    log_pop: np.ndarray,
    targets: list[np.ndarray],
    k: int,
    grid: tuple[float, ...] = BETA_GRID,
) -> tuple[float, dict[float, float]]:
    """The beta of `grid` with the highest mean recall@k (the smallest on a tie), and the
    mean recall of every grid point. Shapes as in `recall_per_user`; raises ValueError on
    an empty grid or no users."""
    if not grid or not len(users):
        raise ValueError("fit_beta needs a non-empty grid and at least one user")
    recalls = {
        float(b): float(recall_per_user(users, pins, log_pop, targets, b, k).mean()) for b in grid
    }
    best = max(recalls.values())
    return min(b for b, r in recalls.items() if r == best), recalls
