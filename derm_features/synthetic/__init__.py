"""Synthetic Pinterest-like ad logs with known ground truth (`derm generate`).

config.py    the knobs (WorldParams, GenerateConfig), the summary and the formulas
world.py     users, Pins and their latent vectors, drawn once per seed
day.py       one simulated day: activity, auctions, clicks, conversions, features
truth.py     the latent truth written beside the log, and `true_affinity`
generate.py  the job: world, then every day, then the truth (`generate_logs`)
"""

from derm_features.synthetic.config import (
    GAP_DAYS,
    GenerateConfig,
    GenerateSummary,
    validate_config,
)
from derm_features.synthetic.generate import generate_logs
from derm_features.synthetic.truth import true_affinity
from derm_features.synthetic.world import interest_at

__all__ = [
    "GAP_DAYS", "GenerateConfig", "GenerateSummary", "generate_logs", "interest_at",
    "true_affinity", "validate_config",
]  # fmt: skip
