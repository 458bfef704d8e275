"""A full re-sync of the online store from the newest pool, and a check of how stale it is.

The daily push writes only the day's changed rows (paper appendix C.2), which is enough as
long as Redis keeps what it was sent. A Redis that restarts empty (one without persistence)
or is replaced loses every carried entity: replaying the day's push (`--online-only`) then
restores only that day's changes. `resync_online` pushes the whole live pool of the newest
day instead (`derm materialize --resync`); `online_coverage` samples the pool and counts how
many of its entities Redis still holds (`derm status`).
"""

from __future__ import annotations

import numpy as np

from derm_features.core.spec import join_key, view_name
from derm_features.core.workdir import Workdir, days_in_dir
from materialize.storage import MaterializeError, offline_rows, read_pool

PUBLISHED = ("embedding", "last_seen", "model_version")


def newest_pool_day(workdir: Workdir, model: str, entity: str):
    """The day of the newest pool of (model, entity); MaterializeError when there is none."""
    days = days_in_dir(workdir.pool_dir(model, entity))
    if not days:
        raise MaterializeError(f"no {model} {entity} pool in {workdir.root}: nothing to re-sync")
    return days[-1]


def resync_online(workdir: Workdir, model: str, entity: str, store=None) -> int:
    """Pushes every live entity of the newest pool of (model, entity) to Redis, with the
    value, last_seen and model_version it publishes; returns the rows pushed.

    Raises MaterializeError without a pool, OnlineStoreUnavailable when Redis is down.
    """
    from derm_features.feast.online_store import push_rows

    day = newest_pool_day(workdir, model, entity)
    key = join_key(entity)
    pool = read_pool(workdir.pool(model, entity, day), [key, *PUBLISHED])
    if store is None:
        from derm_features.feast.repo import feature_store

        store = feature_store(workdir)
    return push_rows(store, view_name(model, entity), offline_rows(pool, key, day))


def online_coverage(workdir: Workdir, model: str, entity: str, reader, sample: int = 200):
    """(found, sampled): how many of up to `sample` entities of the newest pool Redis holds
    in the view (a seeded sample; (0, 0) without a pool). `reader`: an EmbeddingReader."""
    days = days_in_dir(workdir.pool_dir(model, entity))
    if not days:
        return 0, 0
    key = join_key(entity)
    ids = read_pool(workdir.pool(model, entity, days[-1]), [key])[key].to_numpy()
    if len(ids) > sample:
        ids = np.random.default_rng(0).choice(ids, sample, replace=False)
    view = view_name(model, entity)
    users, pins = (ids, []) if entity == "user" else ([], ids)
    _, found = reader.read(users, pins, [view])[view]
    return int(found.sum()), len(ids)
