"""Feast's vector retrieval on derm's Pin index: `FeatureStore.retrieve_online_documents_v2`.

The online store of derm's default config (`feature_store.yaml`): Feast's Redis store for
every read and write (`DermRedisOnlineStore`), plus document retrieval on the Pin views,
answered by the newest faiss index that `derm index` (or `derm daily`) built, the one
`derm retrieve` and `derm serve`'s /retrieve use:

    store.retrieve_online_documents_v2(
        features=["ctr_pin_embedding:ctr_pin_embedding"], query=user_vector, top_k=100
    )

returns the top-k Pins by cos(u, p) + beta log-popularity(p) (beta: the index's fitted
one), with the requested features read from Redis and ``distance`` = minus that score
(Feast's convention: smaller is closer). Rows come ordered by ``pin_id``, not by distance:
Feast's response builder pairs documents with entity keys in sorted order, so that is the
order in which each row keeps its own distance; sort by ``distance`` for the ranking. Only
the query vector is used: keyword search and filters are refused by name, and Feast's
``distance_metric`` does not apply (the index's score is what derm retrieves by).
"""

from __future__ import annotations

import datetime as dt
from typing import Any, Literal

from feast.protos.feast.types.EntityKey_pb2 import EntityKey as EntityKeyProto
from feast.protos.feast.types.Value_pb2 import Value as ValueProto

from derm_features.core.spec import join_key
from derm_features.core.workdir import Workdir
from derm_features.feast.plugins import DermRedisOnlineStore, DermRedisOnlineStoreConfig

STORE_TYPE = "derm_features.serving.feast_store.DermOnlineStore"


class DermOnlineStoreConfig(DermRedisOnlineStoreConfig):
    """Feast's Redis config plus derm's work directory (where the Pin indexes live)."""

    type: Literal["derm_features.serving.feast_store.DermOnlineStore"] = STORE_TYPE  # type: ignore[assignment]
    workdir: str | None = None  # None: $DERM_WORKDIR, else ./data


class DermOnlineStore(DermRedisOnlineStore):
    """Feast's Redis online store with `retrieve_online_documents_v2` on derm's Pin index."""

    def retrieve_online_documents_v2(
        self,
        config,
        table,
        requested_features: list[str],
        embedding: list[float] | None,
        top_k: int,
        distance_metric: str | None = None,
        query_string: str | None = None,
        filters: Any = None,
        include_feature_view_version_metadata: bool = False,
    ) -> list[tuple[dt.datetime | None, EntityKeyProto | None, dict[str, ValueProto] | None]]:
        """The top-k Pins of the view's model for the user vector `embedding` [D].

        Raises ValueError for a view that is not a derm Pin view, a missing query vector,
        a keyword query or filters, a wrong D; `AnnIndexError` when the model has no index.
        """
        import numpy as np

        from derm_features.serving.ann import MISSING_PIN, load_index

        tags = table.tags or {}
        if tags.get("derm_entity") != "pin":
            raise ValueError(
                f"view '{table.name}' is not a derm Pin view: document retrieval ranks Pins "
                "for a user vector (e.g. features=['ctr_pin_embedding:ctr_pin_embedding'])"
            )
        if embedding is None or query_string is not None or filters is not None:
            raise ValueError(
                "derm's Pin index answers a query vector only (query=<user vector>); "
                "keyword search and filters are not supported"
            )
        workdir = Workdir.resolve(config.online_store.workdir)
        index = load_index(workdir, tags["derm_model"])
        pin_ids, scores = index.retrieve(np.asarray(embedding, np.float32)[None, :], top_k)
        found = pin_ids[0] != MISSING_PIN
        pin_ids, scores = pin_ids[0][found], scores[0][found]
        # Feast pairs the i-th document with the i-th smallest entity key when it builds the
        # response (feast.utils._get_unique_entities_from_values), so documents go back
        # sorted by pin_id: each keeps its own distance; callers sort by distance
        order = np.argsort(pin_ids, kind="stable")
        pin_ids, scores = pin_ids[order], scores[order]
        key = join_key("pin")
        entity_keys = [
            EntityKeyProto(join_keys=[key], entity_values=[ValueProto(int64_val=int(p))])
            for p in pin_ids
        ]
        # a copy: Feast's Redis read appends its `_ts:<view>` field to the list it is given,
        # and Feast builds the response's columns from the caller's list afterwards
        rows = self.online_read(config, table, entity_keys, list(requested_features) or None)
        out = []
        for entity_key, score, (stamp, values) in zip(entity_keys, scores, rows, strict=True):
            # only the requested features (Redis' `_ts:<view>` field is no feature)
            values = {f: v for f, v in (values or {}).items() if not f.startswith("_ts:")}
            for feature in requested_features:  # a Pin indexed but gone from Redis since
                values.setdefault(feature, ValueProto())
            values["distance"] = ValueProto(float_val=-float(score))
            out.append((stamp, entity_key, values))
        return out
