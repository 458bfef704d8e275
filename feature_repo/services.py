"""Feature services for the downstream ranking models: all four DERM embeddings each."""

from feast import FeatureService

from feature_repo.views import (
    ctr_pin_embedding,
    ctr_user_embedding,
    cvr_pin_embedding,
    cvr_user_embedding,
)

ALL_EMBEDDINGS = [ctr_user_embedding, ctr_pin_embedding, cvr_user_embedding, cvr_pin_embedding]

ctr_ranking = FeatureService(
    name="ctr_ranking",
    features=ALL_EMBEDDINGS,
    description="DERM embeddings for the downstream CTR ranking model.",
)

cvr_ranking = FeatureService(
    name="cvr_ranking",
    features=ALL_EMBEDDINGS,
    description="DERM embeddings for the downstream CVR ranking model.",
)
