"""The four DERM embedding feature views: one per upstream model (ctr, cvr) and entity.

Each row: `embedding` (L2-normalised float32 vector of the model's D), `last_seen` (the day
of the entity's newest daily embedding) and `model_version` (the upstream checkpoint it
came from). ttl: the paper keeps entities active in the past three months (90 days in the pool;
91 days in Feast, see EMBEDDING_TTL).
"""

from datetime import timedelta

from feast import FeatureView, Field
from feast.types import Array, Float32, String, UnixTimestamp

from feature_repo.entities import pin, user
from feature_repo.sources import ctr_pin_source, ctr_user_source, cvr_pin_source, cvr_user_source

# The pool keeps an entity last seen on day L through day L+90 (90 days old is kept, see
# materialize/kernel.py), and the pool of day t serves events of day t+1. Offline rows are
# stamped at the end of day L, (L+1) 00:00 UTC, and Feast serves a row while
# event_timestamp <= stamp + ttl (inclusive). So ttl = 91 days serves every event of day
# L+91 and none after day L+92's first instant (exactly (L+92) 00:00:00 is still served:
# Feast's comparison is inclusive and ibis refuses a ttl of mixed units such as 91 days
# minus 1 microsecond). Stamping at t 23:59:59.999999 instead would close that instant but
# open a worse one: an event in day t's last microsecond would see day t's own value.
POOL_TTL_DAYS = 90
EMBEDDING_TTL = timedelta(days=POOL_TTL_DAYS + 1)


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
