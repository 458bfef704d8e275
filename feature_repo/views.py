"""The four DERM embedding feature views: one per upstream model (ctr, cvr) and entity.

Each row: `embedding` (L2-normalised float32 vector of the model's D), `last_seen` (the day
of the entity's newest daily embedding) and `model_version` (the upstream checkpoint it
came from). ttl = 90 days: the paper keeps entities active in the past three months.
"""

from datetime import timedelta

from feast import FeatureView, Field
from feast.types import Array, Float32, String, UnixTimestamp

from feature_repo.entities import pin, user
from feature_repo.sources import ctr_pin_source, ctr_user_source, cvr_pin_source, cvr_user_source

EMBEDDING_TTL = timedelta(days=90)


def _embedding_view(name, entity, source, description):
    return FeatureView(
        name=name,
        entities=[entity],
        ttl=EMBEDDING_TTL,
        schema=[
            Field(name="embedding", dtype=Array(Float32)),
            Field(name="last_seen", dtype=UnixTimestamp),
            Field(name="model_version", dtype=String),
        ],
        source=source,
        online=True,
        description=description,
        tags={"derm": "embedding"},
    )


ctr_user_embedding = _embedding_view(
    "ctr_user_embedding", user, ctr_user_source, "User tower of the upstream CTR model."
)
ctr_pin_embedding = _embedding_view(
    "ctr_pin_embedding", pin, ctr_pin_source, "Pin tower of the upstream CTR model."
)
cvr_user_embedding = _embedding_view(
    "cvr_user_embedding", user, cvr_user_source, "User tower of the upstream CVR model."
)
cvr_pin_embedding = _embedding_view(
    "cvr_pin_embedding", pin, cvr_pin_source, "Pin tower of the upstream CVR model."
)
