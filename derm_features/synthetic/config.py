"""The generator's knobs, its summary and the formulas written to ``truth/meta.json``."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field
from pathlib import Path

from derm_features.core.workdir import Workdir

SURFACES = ("home_feed", "related_pins", "search")
USER_ID_BASE = 1_000_000_000  # user_id = USER_ID_BASE + index; distinct from Pin ids
PIN_ID_BASE = 5_000_000_000  # pin_id = PIN_ID_BASE + index
ADVERTISER_ID_BASE = 9_000_000_000
MAX_USERS = PIN_ID_BASE - USER_ID_BASE
GAP_DAYS = 90  # the feature views' TTL; the summary counts returns after a longer gap

CLICK_AFFINITY_FORMULA = (
    "click_affinity(u, p, t) = click_scale * dot(interest(u, t), content(p))"
    " + user_bias(u) + pin_bias(p)"
)
CONVERSION_AFFINITY_FORMULA = (
    "conversion_affinity(u, p, t) = conversion_scale * dot(s * interest(u, t) + r * intent(u),"
    " s * content(p) + r * conversion_vector(p)) + conversion_bias(p),"
    " s = conversion_shared, r = sqrt(1 - s^2)"
)
FORMULAS = {
    "day_index": "t = (day - start).days",
    "interest": (
        "interest(u, t) = cos(theta) * interest_a(u) + sin(theta) * interest_b(u),"
        " theta = (pi / 4) * (1 - cos(drift_rate(u) * t + drift_phase(u)))"
    ),
    "click_affinity": CLICK_AFFINITY_FORMULA,
    "click_probability": (
        "P(click) = sigmoid(click_intercept + click_affinity + surface_offset[surface]"
        " - position_decay * ln(position) + hour_amplitude * cos(2 pi (hour - hour_peak) / 24))"
    ),
    "conversion_affinity": CONVERSION_AFFINITY_FORMULA,
    "conversion_probability": (
        "P(conversion | click) = sigmoid(conversion_intercept + conversion_affinity);"
        " P(conversion | no click) = sigmoid(conversion_intercept + conversion_affinity"
        " + view_through_offset)"
    ),
    "targeting": (
        "each impression draws `candidates` alive Pins by popularity and shows"
        " argmax(targeting * click_scale * dot(interest, content) + Gumbel noise)"
    ),
    "activity": "alive user u is active on day t with probability p_active(u)",
    "user_pretrained_embedding": (
        "interest(u, max(t - 1, 0)) @ user_projection + user_pretrained_error(u): a"
        " representation refreshed daily from the user's organic activity up to yesterday"
        " (paper 3.1: the user tower reads pretrained representations); error std"
        " user_pretrained_noise relative to the signal's per-dimension std"
    ),
    "pin_content_embedding": (
        "content(p) @ pin_projection + noise: a fixed pretrained view of the Pin's content;"
        " noise std pretrained_noise relative to the signal's per-dimension std"
    ),
}


@dataclass(frozen=True)
class WorldParams:
    """Every knob of the simulated marketplace; all of it is written to ``truth/meta.json``."""

    latent_dim: int = 16
    n_categories: int = 32
    n_countries: int = 20
    n_age_buckets: int = 7
    pins_per_advertiser: int = 8
    pretrained_dim: int = 32
    pretrained_noise: float = 0.6  # noise std relative to the signal's per-dimension std
    user_pretrained_dim: int = 32  # 0: no user_pretrained_embedding column
    user_pretrained_noise: float = 1.0  # as above, for the user's representation
    max_recent_pins: int = 20
    max_position: int = 50
    # life cycle
    initial_user_share: float = 0.7  # users alive on day 0; the rest arrive uniformly later
    initial_pin_share: float = 0.6
    user_lifetime_mean_days: float = 365.0
    pin_lifetime_mean_days: float = 60.0
    break_share: float = 0.12  # users who leave for more than GAP_DAYS and come back
    break_extra_mean_days: float = 20.0
    # activity (per-user, heavy-tailed)
    active_median: float = 0.08
    active_log_sigma: float = 1.3
    # interest drift
    drift_rate_max: float = 0.06  # rad/day of the phase; theta moves <= (pi/4) * rate a day
    # candidate generation
    candidates: int = 8
    targeting: float = 0.5
    popularity_exponent: float = 0.9
    # clicks
    click_intercept: float = -6.0
    click_scale: float = 5.0
    user_bias_std: float = 0.3
    pin_bias_std: float = 0.4
    surface_probs: tuple[float, ...] = (0.5, 0.35, 0.15)
    surface_offsets: tuple[float, ...] = (0.0, 0.25, 0.6)
    position_decay: float = 0.45
    position_geometric_p: float = 0.1
    hour_amplitude: float = 0.15
    hour_peak: float = 21.0
    # conversions
    conversion_intercept: float = -3.2
    conversion_scale: float = 3.0
    conversion_shared: float = 0.6
    conversion_bias_std: float = 0.5
    view_through_offset: float = -7.0


@dataclass(frozen=True)
class GenerateConfig:
    """One `derm generate` run."""

    out: Path
    users: int = 20_000
    pins: int = 5_000
    days: int = 14
    start: dt.date = dt.date(2026, 1, 1)
    seed: int = 0
    impressions_per_day: int = 50_000
    overwrite: bool = False
    progress: bool = True
    world: WorldParams = field(default_factory=WorldParams)


@dataclass(frozen=True)
class GenerateSummary:
    """What a run produced; `str()` is the summary `derm generate` prints."""

    out: Path
    days: int
    rows: int
    clicks: int
    conversions: int
    view_through_conversions: int
    mean_active_users_per_day: float
    users_seen: int
    pins_seen: int
    new_users: int  # arrived after the first day and appear in the log
    new_pins: int
    users_with_gap_over_90d: int
    seconds: float

    @property
    def ctr(self) -> float:
        return self.clicks / max(self.rows, 1)

    @property
    def cvr_per_click(self) -> float:
        return (self.conversions - self.view_through_conversions) / max(self.clicks, 1)

    def __str__(self) -> str:
        return "\n".join(
            [
                f"wrote {self.rows:,} impressions over {self.days} day(s) to {self.out}",
                f"  CTR {self.ctr:.2%}, conversions per click {self.cvr_per_click:.2%}, "
                f"conversions {self.conversions:,} "
                f"({self.view_through_conversions:,} view-through)",
                f"  mean active users/day {self.mean_active_users_per_day:,.0f}; "
                f"users seen {self.users_seen:,} (arrived after day 1: {self.new_users:,}), "
                f"Pins seen {self.pins_seen:,} (arrived after day 1: {self.new_pins:,})",
                f"  users back after a gap > {GAP_DAYS} days: {self.users_with_gap_over_90d:,}",
                f"  {self.seconds:.1f} s ({self.rows / max(self.seconds, 1e-9):,.0f} rows/s)",
            ]
        )


def validate_config(config: GenerateConfig) -> None:
    """Raises ValueError naming the flag and its rule for any bad value."""
    rules = [
        (config.users >= 1, f"--users must be >= 1, got {config.users}"),
        (config.users <= MAX_USERS, f"--users must be <= {MAX_USERS}, got {config.users}"),
        (config.pins >= 1, f"--pins must be >= 1, got {config.pins}"),
        (config.days >= 1, f"--days must be >= 1, got {config.days}"),
        (
            config.impressions_per_day >= 1,
            f"--impressions-per-day must be >= 1, got {config.impressions_per_day}",
        ),
        (config.seed >= 0, f"--seed must be >= 0, got {config.seed}"),
    ]
    for ok, message in rules:
        if not ok:
            raise ValueError(message)
    out = Path(config.out)
    if out.exists() and not out.is_dir():
        raise ValueError(f"--out must be a directory, but {out} is a file")
    if not config.overwrite:
        for sub in (Workdir(out).logs, Workdir(out).truth):
            if sub.is_dir() and any(p for p in sub.iterdir() if not p.name.startswith(".")):
                raise ValueError(
                    f"--out {out} already holds {sub.name}/ from an earlier run; "
                    "choose an empty directory or pass --overwrite to replace it"
                )
