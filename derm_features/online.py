"""Online embedding reads for ranking requests: one user, many candidate Pins.

`EmbeddingReader.read` returns the same values as `FeatureStore.get_online_features`
(Feast's Redis layout, `derm_features.feast_redis_layout`) as NumPy arrays, in one
pipelined round trip: one HMGET per distinct entity, asking for just the `embedding`
field of each requested view of that entity, decoded with `np.frombuffer`.

Freshness: like Feast, the reader does not apply the views' ttl at read time (Feast's
online reads do not enforce ttl). Expired entities are kept out of Redis instead: the
daily materializer removes the view's fields of every entity that leaves the pool
(`materialize.online.remove_entities`), so what Redis holds is the live pool.
"""

from __future__ import annotations

from collections.abc import Sequence
from operator import itemgetter

import numpy as np
from feast import FeatureStore

from derm_features.feast_redis_layout import (
    ViewLayout,
    decode_float_lists,
    dedicated_redis_client,
    entity_keys,
    fail_fast,
    run_pipelined,
    unavailable_as_clear_error,
    view_layout,
)

EMBEDDING_FEATURE = "embedding"


class EmbeddingReader:
    """Reads DERM embeddings of users and Pins from the online store of a `FeatureStore`.

    Layouts are resolved from the registry once per view and kept. The Redis client is
    configured like the store's (address, TLS, password) but has connections of its own,
    not shared with Feast's SDK calls (`dedicated_redis_client` says why), and fails fast
    when Redis is down (`fail_fast`: no retries, 2 s socket timeouts unless configured).
    """

    def __init__(self, store: FeatureStore, dims: dict[str, int] | None = None, client=None):
        """`dims`: view -> D. Without it, D is learned from the first value read and kept,
        so a request in which no entity of a never-read view is found gets shape (n, 0).
        `client`: a redis-py client to read with (default: a fail-fast
        `dedicated_redis_client`)."""
        self._store = store
        self.client = client if client is not None else fail_fast(dedicated_redis_client(store))
        self._dims = dict(dims or {})
        self._layouts: dict[str, ViewLayout] = {}

    def layout(self, view: str) -> ViewLayout:
        if view not in self._layouts:
            self._layouts[view] = view_layout(self._store, view)
        return self._layouts[view]

    def read(
        self,
        user_ids: Sequence[int] | np.ndarray,
        pin_ids: Sequence[int] | np.ndarray,
        views: list[str],
    ) -> dict[str, tuple[np.ndarray, np.ndarray]]:
        """view -> (values float32 [n, D], found bool [n]).

        User views are read for `user_ids`, Pin views for `pin_ids`, in the order given
        (repeats allowed). A missing entity gives a zero row and found=False.
        """
        ids_by_join_key = {"user_id": np.asarray(user_ids), "pin_id": np.asarray(pin_ids)}
        # Views sharing a join key share the entity's hash: one HMGET reads them all.
        views_by_join_key: dict[str, list[str]] = {}
        for view in views:
            views_by_join_key.setdefault(self.layout(view).join_key, []).append(view)

        batches: list[list] = []
        # (views, position of each requested id among the distinct ones, first reply, count)
        plan: list[tuple[list[str], np.ndarray, int, int]] = []
        n_commands = 0
        for join_key, key_views in views_by_join_key.items():
            if join_key not in ids_by_join_key:
                raise ValueError(f"views {key_views} have join key '{join_key}', not user/pin")
            ids = ids_by_join_key[join_key]
            distinct, inverse = np.unique(ids, return_inverse=True)
            fields = [self.layout(v).feature_fields[EMBEDDING_FEATURE] for v in key_views]
            keys = entity_keys(self.layout(key_views[0]), distinct)
            plan.append((key_views, inverse, n_commands, len(keys)))
            batches.append([b"HMGET", keys, *fields])
            n_commands += len(keys)

        with unavailable_as_clear_error(self._store, "online embedding read"):
            replies = run_pipelined(self.client, *batches) if n_commands else []

        result: dict[str, tuple[np.ndarray, np.ndarray]] = {}
        for key_views, inverse, first, count in plan:
            entity_replies = replies[first : first + count]
            for position, view in enumerate(key_views):
                blobs = list(map(itemgetter(position), entity_replies))
                values, found = decode_float_lists(blobs, self._dims.get(view))
                if found.any():
                    known = self._dims.setdefault(view, values.shape[1])
                    if known != values.shape[1]:
                        raise ValueError(f"'{view}' holds {values.shape[1]}-d values, not {known}")
                result[view] = (values[inverse], found[inverse])
        return result
