"""Synthetic Pinterest-like ad logs with known ground truth (`derm generate`).

The generator simulates a small ads marketplace one day at a time:

- **World** (drawn once per seed): users with two latent interest vectors ``a``, ``b``
  (built from favourite categories and a country x age "demographic" direction) between
  which their interest drifts slowly, a latent conversion intent ``c``, a heavy-tailed
  activity propensity, an arrival day, a departure day and, for some, a break longer than
  90 days; Pins with a latent content vector (category centroid + advertiser + noise), a
  latent conversion vector, a power-law popularity and a campaign lifetime.
- **Day t**: the alive users draw whether they are active; impressions go to the active
  users (heavy users get more); each impression samples a few candidate Pins by
  popularity and shows the one an ad auction prefers (Gumbel-max over the click affinity:
  ads are targeted); surface, slot and hour move the click probability; conversions
  follow clicks (plus rare view-through ones) from an affinity that shares part of the
  click affinity.
- **Features** are computed from the state at the start of the day (never from the day's
  own outcomes): rolling counts, the user's recent clicked Pins, a noisy "pretrained" view
  of the Pin's content vector.

Output under ``--out DIR``: ``logs/ds=YYYY-MM-DD/part-0.parquet`` (the log contract of
DESIGN.md) and ``truth/`` (``users.parquet``, ``pins.parquet``, ``meta.json`` with every
parameter and the exact formulas; `true_affinity` evaluates them).

Determinism: the world comes from ``SeedSequence([seed, 0])`` and day t from
``SeedSequence([seed, 1, t])``, so the same arguments give the same bytes.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import math
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from derm_features.core.atomic import atomic_dir, clean_stale_tmp, write_parquet_atomic
from derm_features.core.workdir import Workdir, ds

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


# ----------------------------------------------------------------------------- the world


@dataclass(frozen=True)
class World:
    """The static latent structure of one seed. Arrays are indexed by user / Pin index."""

    params: WorldParams
    # users
    interest_a: np.ndarray  # (U, d) float32
    interest_b: np.ndarray  # (U, d)
    drift_rate: np.ndarray  # (U,) rad/day
    drift_phase: np.ndarray  # (U,)
    intent: np.ndarray  # (U, d) latent conversion intent
    user_bias: np.ndarray  # (U,)
    country: np.ndarray  # (U,) int: index into country codes
    age_bucket: np.ndarray  # (U,) int8
    p_active: np.ndarray  # (U,)
    intensity: np.ndarray  # (U,) relative impressions per active day
    user_arrive: np.ndarray  # (U,) int day index
    user_leave: np.ndarray  # (U,) first day gone
    break_start: np.ndarray  # (U,) first day of the break (days + big if none)
    break_end: np.ndarray  # (U,) first day back
    # Pins
    content: np.ndarray  # (P, d)
    conversion_vector: np.ndarray  # (P, d)
    pin_bias: np.ndarray  # (P,)
    conversion_bias: np.ndarray  # (P,) from the advertiser
    category: np.ndarray  # (P,) int32
    advertiser: np.ndarray  # (P,) int64 index
    popularity: np.ndarray  # (P,) power-law weights
    pretrained: np.ndarray  # (P, pretrained_dim) float32
    pin_arrive: np.ndarray
    pin_leave: np.ndarray


COUNTRY_CODES = (
    "US", "GB", "DE", "FR", "CA", "BR", "MX", "IN", "JP", "AU",
    "IT", "ES", "NL", "SE", "PL", "AR", "CO", "ZA", "KR", "TR",
)  # fmt: skip


def _unit(x: np.ndarray) -> np.ndarray:
    return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-9)


def _lifetimes(
    rng: np.random.Generator, n: int, days: int, initial_share: float, mean_life: float
) -> tuple[np.ndarray, np.ndarray]:
    """Arrival day (0 for the initial share, else uniform) and first day gone."""
    arrive = np.where(rng.random(n) < initial_share, 0, rng.integers(0, max(days, 1), n))
    leave = arrive + 1 + np.floor(rng.exponential(mean_life, n)).astype(np.int64)
    arrive[0], leave[0] = 0, np.iinfo(np.int64).max // 2  # one entity always alive
    return arrive.astype(np.int64), leave


def build_world(users: int, pins: int, days: int, seed: int, p: WorldParams) -> World:
    """Draws the latent world for a seed (pure: no I/O)."""
    rng = np.random.Generator(np.random.PCG64(np.random.SeedSequence([seed, 0])))
    d = p.latent_dim
    centroids = _unit(rng.standard_normal((p.n_categories, d)))
    # a demographic direction per (country, age): mixes two categories
    demo = _unit(
        centroids[rng.integers(0, p.n_categories, (p.n_countries, p.n_age_buckets, 2))].sum(-2)
    )
    # users: skewed countries (Zipf), age buckets around the middle
    country_w = 1.0 / np.arange(1, p.n_countries + 1) ** 1.2
    country = rng.choice(p.n_countries, users, p=country_w / country_w.sum())
    age_w = np.array([0.08, 0.22, 0.24, 0.18, 0.13, 0.09, 0.06])[: p.n_age_buckets]
    age = rng.choice(p.n_age_buckets, users, p=age_w / age_w.sum()).astype(np.int8)

    def interest() -> np.ndarray:
        fav = centroids[rng.integers(0, p.n_categories, (users, 2))]
        weights = rng.dirichlet([1.0, 1.0], users)[..., None]
        v = 0.45 * demo[country, age] + 0.8 * (fav * weights).sum(1)
        return _unit(v + 0.35 * rng.standard_normal((users, d)) / math.sqrt(d))

    interest_a, interest_b = interest(), interest()
    drift_rate = rng.uniform(0.0, p.drift_rate_max, users)
    drift_phase = rng.uniform(0.0, 2 * math.pi, users)
    intent = _unit(rng.standard_normal((users, d)))
    country_effect = rng.normal(0, 0.2, p.n_countries)
    age_effect = rng.normal(0, 0.15, p.n_age_buckets)
    user_bias = country_effect[country] + age_effect[age] + rng.normal(0, p.user_bias_std, users)
    p_active = np.clip(
        np.exp(rng.normal(math.log(p.active_median), p.active_log_sigma, users)), 0.002, 1.0
    )
    intensity = np.sqrt(p_active) * np.exp(rng.normal(0, 0.5, users))
    user_arrive, user_leave = _lifetimes(
        rng, users, days, p.initial_user_share, p.user_lifetime_mean_days
    )
    has_break = rng.random(users) < p.break_share
    has_break[0] = False
    break_start = np.where(
        has_break, user_arrive + rng.integers(1, max(days, 2), users), np.iinfo(np.int64).max // 2
    )
    break_len = GAP_DAYS + 1 + np.floor(rng.exponential(p.break_extra_mean_days, users))
    break_end = break_start + np.where(has_break, break_len.astype(np.int64), 0)
    user_leave = np.where(has_break, user_leave + (break_end - break_start), user_leave)

    # Pins: advertisers own a few categories; content = category + advertiser + noise
    n_adv = max(1, math.ceil(pins / p.pins_per_advertiser))
    advertiser = rng.integers(0, n_adv, pins)
    adv_categories = rng.integers(0, p.n_categories, (n_adv, 3))
    category = adv_categories[advertiser, rng.integers(0, 3, pins)].astype(np.int32)
    adv_style = _unit(rng.standard_normal((n_adv, d)))
    content = _unit(
        0.85 * centroids[category]
        + 0.3 * adv_style[advertiser]
        + 0.45 * rng.standard_normal((pins, d)) / math.sqrt(d)
    )
    adv_conversion = _unit(rng.standard_normal((n_adv, d)))
    conversion_vector = _unit(
        0.7 * adv_conversion[advertiser] + 0.7 * rng.standard_normal((pins, d)) / math.sqrt(d)
    )
    pin_bias = rng.normal(0, p.pin_bias_std, pins)
    conversion_bias = rng.normal(0, p.conversion_bias_std, n_adv)[advertiser]
    rank = rng.permutation(pins) + 1
    popularity = 1.0 / rank.astype(np.float64) ** p.popularity_exponent
    projection = rng.standard_normal((d, p.pretrained_dim)) / math.sqrt(d)
    signal = content @ projection  # per-dimension std ~ 1/sqrt(d)
    noise = p.pretrained_noise * rng.standard_normal(signal.shape) / math.sqrt(d)
    pretrained = (signal + noise).astype(np.float32)
    pin_arrive, pin_leave = _lifetimes(
        rng, pins, days, p.initial_pin_share, p.pin_lifetime_mean_days
    )
    f32 = np.float32
    return World(
        params=p,
        interest_a=interest_a.astype(f32),
        interest_b=interest_b.astype(f32),
        drift_rate=drift_rate,
        drift_phase=drift_phase,
        intent=intent.astype(f32),
        user_bias=user_bias,
        country=country,
        age_bucket=age,
        p_active=p_active,
        intensity=intensity,
        user_arrive=user_arrive,
        user_leave=user_leave,
        break_start=break_start,
        break_end=break_end,
        content=content.astype(f32),
        conversion_vector=conversion_vector.astype(f32),
        pin_bias=pin_bias,
        conversion_bias=conversion_bias,
        category=category,
        advertiser=advertiser,
        popularity=popularity,
        pretrained=pretrained,
        pin_arrive=pin_arrive,
        pin_leave=pin_leave,
    )


def interest_at(a: np.ndarray, b: np.ndarray, rate: np.ndarray, phase: np.ndarray, t: int):
    """interest(u, t): between ``a`` and ``b``, moving slowly with the day index ``t``."""
    theta = (math.pi / 4) * (1 - np.cos(rate * t + phase))
    return (np.cos(theta)[:, None] * a + np.sin(theta)[:, None] * b).astype(np.float32)


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-x))


def _rowdot(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    return np.einsum("nd,nd->n", x, y)


def conversion_affinity(
    p: WorldParams,
    interest: np.ndarray,
    intent: np.ndarray,
    content: np.ndarray,
    conversion_vector: np.ndarray,
    conversion_bias: np.ndarray,
) -> np.ndarray:
    """`CONVERSION_AFFINITY_FORMULA` on aligned rows."""
    s = p.conversion_shared
    r = math.sqrt(1 - s * s)
    return (
        p.conversion_scale * _rowdot(s * interest + r * intent, s * content + r * conversion_vector)
        + conversion_bias
    )


# ----------------------------------------------------------------------------- one day


@dataclass
class SimState:
    """What carries from day to day: rolling counts, recent clicks, first/last seen."""

    sessions: np.ndarray  # (7, U) int8: had impressions that day (ring buffer)
    clicks: np.ndarray  # (30, U) int16
    pin_impressions: np.ndarray  # (7, P) int32
    recent: np.ndarray  # (U, max_recent) int64 Pin indices, newest first
    recent_len: np.ndarray  # (U,) int16
    first_seen_user: np.ndarray  # (U,) int64, -1 = never
    last_seen_user: np.ndarray
    first_seen_pin: np.ndarray  # (P,)
    returned_after_gap: np.ndarray  # (U,) bool

    @classmethod
    def empty(cls, users: int, pins: int, max_recent: int) -> SimState:
        return cls(
            sessions=np.zeros((7, users), np.int8),
            clicks=np.zeros((30, users), np.int16),
            pin_impressions=np.zeros((7, pins), np.int32),
            recent=np.zeros((users, max_recent), np.int64),
            recent_len=np.zeros(users, np.int16),
            first_seen_user=np.full(users, -1, np.int64),
            last_seen_user=np.full(users, -1, np.int64),
            first_seen_pin=np.full(pins, -1, np.int64),
            returned_after_gap=np.zeros(users, bool),
        )


@dataclass(frozen=True)
class DayStats:
    rows: int
    clicks: int
    conversions: int
    view_through: int
    active_users: int


def _weighted_draw(
    rng: np.random.Generator, items: np.ndarray, weights: np.ndarray, n
) -> np.ndarray:
    cdf = np.cumsum(weights)
    pick = np.searchsorted(cdf, rng.random(n) * cdf[-1], side="right")
    return items[np.minimum(pick, len(items) - 1)]


def _pick_users(rng: np.random.Generator, w: World, t: int, n: int) -> np.ndarray:
    """The user index of each of the day's `n` impressions."""
    alive = (w.user_arrive <= t) & (t < w.user_leave) & ~((w.break_start <= t) & (t < w.break_end))
    active = np.flatnonzero(alive & (rng.random(len(alive)) < w.p_active))
    if active.size == 0:  # user 0 is always alive; keep the day non-empty
        active = np.array([0])
    if active.size >= n:
        return _weighted_draw(rng, active, w.intensity[active], n)
    extra = _weighted_draw(rng, active, w.intensity[active], n - active.size)
    return np.concatenate([active, extra])


def simulate_day(
    w: World, state: SimState, t: int, day: dt.date, rng: np.random.Generator, n: int
) -> tuple[pa.Table, DayStats]:
    """Generates day `t`'s impressions (sorted by ts) and advances `state` past that day."""
    p = w.params
    user = _pick_users(rng, w, t, n)
    interest = interest_at(w.interest_a, w.interest_b, w.drift_rate, w.drift_phase, t)

    # targeting: popular candidates, the auction prefers the user's affinity
    alive_pins = np.flatnonzero((w.pin_arrive <= t) & (t < w.pin_leave))
    cand = _weighted_draw(rng, alive_pins, w.popularity[alive_pins], (n, p.candidates))
    pin = np.empty(n, np.int64)
    chunk = 65_536  # bounds the (chunk, candidates, d) gather
    for lo in range(0, n, chunk):
        hi = min(lo + chunk, n)
        score = np.einsum("nd,nkd->nk", interest[user[lo:hi]], w.content[cand[lo:hi]])
        gumbel = -np.log(-np.log(rng.random(score.shape) + 1e-12) + 1e-12)
        best = np.argmax(p.targeting * p.click_scale * score + gumbel, axis=1)
        pin[lo:hi] = cand[lo:hi][np.arange(hi - lo), best]

    # context
    surface = rng.choice(len(SURFACES), n, p=np.asarray(p.surface_probs) / sum(p.surface_probs))
    position = np.minimum(rng.geometric(p.position_geometric_p, n), p.max_position)
    hours = np.arange(24)
    hour_w = 1 + 0.7 * np.cos(2 * np.pi * (hours - 20) / 24)
    hour = rng.choice(24, n, p=hour_w / hour_w.sum())
    micros = rng.integers(0, 3_600_000_000, n)
    day_start = int(dt.datetime.combine(day, dt.time(), tzinfo=dt.UTC).timestamp()) * 1_000_000
    ts = day_start + hour.astype(np.int64) * 3_600_000_000 + micros

    # outcomes
    u_vec, p_vec = interest[user], w.content[pin]
    click_aff = p.click_scale * _rowdot(u_vec, p_vec) + w.user_bias[user] + w.pin_bias[pin]
    click_logit = (
        p.click_intercept
        + click_aff
        + np.asarray(p.surface_offsets)[surface]
        - p.position_decay * np.log(position)
        + p.hour_amplitude * np.cos(2 * np.pi * (hour - p.hour_peak) / 24)
    )
    click = rng.random(n) < _sigmoid(click_logit)
    conv_logit = p.conversion_intercept + conversion_affinity(
        p, u_vec, w.intent[user], p_vec, w.conversion_vector[pin], w.conversion_bias[pin]
    )
    conv_logit = np.where(click, conv_logit, conv_logit + p.view_through_offset)
    conversion = rng.random(n) < _sigmoid(conv_logit)

    order = np.argsort(ts, kind="stable")
    user, pin, ts, click, conversion = (
        user[order],
        pin[order],
        ts[order],
        click[order],
        conversion[order],
    )
    surface, position, hour = surface[order], position[order], hour[order]

    table = _day_table(w, state, user, pin, ts, click, conversion, surface, position, hour)
    stats = DayStats(
        rows=n,
        clicks=int(click.sum()),
        conversions=int(conversion.sum()),
        view_through=int((conversion & ~click).sum()),
        active_users=int(np.unique(user).size),
    )
    _advance(state, t, user, pin, click)
    return table, stats


def _strings(codes: np.ndarray, names: tuple[str, ...]) -> pa.Array:
    """A plain string column from integer codes (decoded in Arrow: fast, no Python objects)."""
    return pa.DictionaryArray.from_arrays(
        pa.array(codes, pa.int32()), pa.array(names, pa.string())
    ).dictionary_decode()


def _day_table(w, state, user, pin, ts, click, conversion, surface, position, hour) -> pa.Table:
    """The day's rows in the log schema; features read the state at the start of the day."""
    n = len(user)
    lengths = state.recent_len[user].astype(np.int64)
    offsets = np.zeros(n + 1, np.int64)
    np.cumsum(lengths, out=offsets[1:])
    row = np.repeat(np.arange(n), lengths)
    slot = np.arange(offsets[-1]) - offsets[row]
    recent_ids = state.recent[user[row], slot] + PIN_ID_BASE
    surface_names = _strings(surface, SURFACES)
    emb = w.pretrained[pin]
    return pa.table(
        {
            "user_id": pa.array(user + USER_ID_BASE, pa.int64()),
            "pin_id": pa.array(pin + PIN_ID_BASE, pa.int64()),
            "ts": pa.array(ts, pa.timestamp("us", "UTC")),
            "click": pa.array(click.astype(np.int8), pa.int8()),
            "conversion": pa.array(conversion.astype(np.int8), pa.int8()),
            "surface": surface_names,
            "user_country": _strings(w.country[user], COUNTRY_CODES),
            "user_age_bucket": pa.array(w.age_bucket[user], pa.int8()),
            "user_sessions_7d": pa.array(state.sessions.sum(0, dtype=np.int32)[user], pa.float32()),
            "user_clicks_30d": pa.array(state.clicks.sum(0, dtype=np.int32)[user], pa.float32()),
            "user_recent_pins": pa.ListArray.from_arrays(
                pa.array(offsets.astype(np.int32), pa.int32()), pa.array(recent_ids, pa.int64())
            ),
            "pin_category": pa.array(w.category[pin], pa.int32()),
            "pin_advertiser_id": pa.array(w.advertiser[pin] + ADVERTISER_ID_BASE, pa.int64()),
            "pin_impressions_7d": pa.array(
                state.pin_impressions.sum(0, dtype=np.int64)[pin], pa.float32()
            ),
            "pin_content_embedding": pa.FixedSizeListArray.from_arrays(
                pa.array(emb.reshape(-1), pa.float32()), emb.shape[1]
            ),
            "ctx_surface": surface_names,
            "ctx_hour": pa.array(hour.astype(np.int8), pa.int8()),
            "ctx_position": pa.array(position.astype(np.int16), pa.int16()),
        }
    )


def _advance(state: SimState, t: int, user, pin, click) -> None:
    """Moves the rolling state past day `t` (rows sorted by ts)."""
    seen = np.unique(user)
    gap = (state.last_seen_user[seen] >= 0) & (t - state.last_seen_user[seen] > GAP_DAYS)
    state.returned_after_gap[seen[gap]] = True
    state.first_seen_user[seen[state.first_seen_user[seen] < 0]] = t
    state.last_seen_user[seen] = t
    pins_seen = np.unique(pin)
    state.first_seen_pin[pins_seen[state.first_seen_pin[pins_seen] < 0]] = t

    state.sessions[t % 7] = 0
    state.sessions[t % 7, seen] = 1
    state.clicks[t % 30] = np.bincount(user[click], minlength=state.clicks.shape[1]).clip(
        0, np.iinfo(np.int16).max
    )
    state.pin_impressions[t % 7] = np.bincount(pin, minlength=state.pin_impressions.shape[1])

    # recent clicked Pins, newest first: today's clicks (newest first), then the old list
    k = state.recent.shape[1]
    cu, cp = user[click][::-1], pin[click][::-1]  # newest first
    if cu.size == 0:
        return
    order = np.argsort(cu, kind="stable")
    cu, cp = cu[order], cp[order]
    clickers, first, count = np.unique(cu, return_index=True, return_counts=True)
    rank = np.arange(cu.size) - np.repeat(first, count)
    today = np.zeros((clickers.size, k), np.int64)
    keep = rank < k
    today[np.searchsorted(clickers, cu[keep]), rank[keep]] = cp[keep]
    slots = np.arange(k)[None, :]
    src = slots - count[:, None]
    old = np.take_along_axis(state.recent[clickers], np.clip(src, 0, k - 1), axis=1)
    state.recent[clickers] = np.where(src < 0, today, old)
    state.recent_len[clickers] = np.minimum(state.recent_len[clickers] + count, k)


# ----------------------------------------------------------------------------- truth


def _fixed_list(x: np.ndarray) -> pa.Array:
    return pa.FixedSizeListArray.from_arrays(
        pa.array(np.ascontiguousarray(x, np.float32).reshape(-1), pa.float32()), x.shape[1]
    )


def write_truth(truth: Path, w: World, config: GenerateConfig) -> None:
    """Writes the latent world and ``meta.json`` (every parameter, every formula)."""
    with atomic_dir(truth) as tmp:
        users = pa.table(
            {
                "user_id": pa.array(np.arange(len(w.user_bias)) + USER_ID_BASE, pa.int64()),
                "interest_a": _fixed_list(w.interest_a),
                "interest_b": _fixed_list(w.interest_b),
                "drift_rate": pa.array(w.drift_rate, pa.float64()),
                "drift_phase": pa.array(w.drift_phase, pa.float64()),
                "intent": _fixed_list(w.intent),
                "user_bias": pa.array(w.user_bias, pa.float64()),
                "p_active": pa.array(w.p_active, pa.float64()),
                "arrive_day": pa.array(w.user_arrive, pa.int64()),
                "leave_day": pa.array(w.user_leave, pa.int64()),
                "break_start_day": pa.array(w.break_start, pa.int64()),
                "break_end_day": pa.array(w.break_end, pa.int64()),
            }
        )
        pins = pa.table(
            {
                "pin_id": pa.array(np.arange(len(w.pin_bias)) + PIN_ID_BASE, pa.int64()),
                "content": _fixed_list(w.content),
                "conversion_vector": _fixed_list(w.conversion_vector),
                "pin_bias": pa.array(w.pin_bias, pa.float64()),
                "conversion_bias": pa.array(w.conversion_bias, pa.float64()),
                "category": pa.array(w.category, pa.int32()),
                "advertiser_id": pa.array(w.advertiser + ADVERTISER_ID_BASE, pa.int64()),
                "popularity": pa.array(w.popularity, pa.float64()),
                "arrive_day": pa.array(w.pin_arrive, pa.int64()),
                "leave_day": pa.array(w.pin_leave, pa.int64()),
            }
        )
        pq.write_table(users, tmp / "users.parquet")
        pq.write_table(pins, tmp / "pins.parquet")
        meta = {
            "generator": "derm_features.synthetic.generate",
            "config": {
                "users": config.users,
                "pins": config.pins,
                "days": config.days,
                "start": config.start.isoformat(),
                "seed": config.seed,
                "impressions_per_day": config.impressions_per_day,
            },
            "params": dataclasses.asdict(w.params),
            "surfaces": list(SURFACES),
            "countries": list(COUNTRY_CODES),
            "id_bases": {
                "user_id": USER_ID_BASE,
                "pin_id": PIN_ID_BASE,
                "advertiser_id": ADVERTISER_ID_BASE,
            },
            "formulas": FORMULAS,
            "note": (
                "Features are computed from the state at the start of each day. Day t's "
                "impressions draw from SeedSequence([seed, 1, t]), the world from "
                "SeedSequence([seed, 0])."
            ),
        }
        (tmp / "meta.json").write_text(json.dumps(meta, indent=2) + "\n")


def _rows_for(ids: np.ndarray, all_ids: np.ndarray, what: str) -> np.ndarray:
    ids = np.asarray(ids, np.int64)
    idx = np.searchsorted(all_ids, ids)
    idx = np.minimum(idx, len(all_ids) - 1)
    missing = all_ids[idx] != ids
    if missing.any():
        raise KeyError(f"{what} {ids[missing][0]} is not in the generated world")
    return idx


def true_affinity(
    truth_dir: str | Path,
    user_ids: np.ndarray,
    pin_ids: np.ndarray,
    day: dt.date | str,
    kind: str = "click",
) -> np.ndarray:
    """The true click or conversion affinity (a logit term) of aligned (user, Pin) pairs.

    `kind` "click" is `CLICK_AFFINITY_FORMULA`, "conversion" is
    `CONVERSION_AFFINITY_FORMULA`, both at the user's interest on `day`; context and
    intercepts are left out (they do not depend on the pair). Returns float64 (n,).
    """
    if kind not in ("click", "conversion"):
        raise ValueError(f"kind must be 'click' or 'conversion', got '{kind}'")
    truth_dir = Path(truth_dir)
    meta = json.loads((truth_dir / "meta.json").read_text())
    p = WorldParams(
        **{
            k: tuple(v) if isinstance(v, list) else v
            for k, v in meta["params"].items()
            if k in {f.name for f in dataclasses.fields(WorldParams)}
        }
    )
    day = dt.date.fromisoformat(day) if isinstance(day, str) else day
    t = (day - dt.date.fromisoformat(meta["config"]["start"])).days
    users = pq.read_table(truth_dir / "users.parquet")
    pins = pq.read_table(truth_dir / "pins.parquet")
    u = _rows_for(user_ids, users["user_id"].to_numpy(), "user_id")
    q = _rows_for(pin_ids, pins["pin_id"].to_numpy(), "pin_id")

    def vectors(table: pa.Table, column: str, rows: np.ndarray) -> np.ndarray:
        flat = table[column].combine_chunks().flatten().to_numpy()
        return flat.reshape(len(table), -1)[rows]

    interest = interest_at(
        vectors(users, "interest_a", u),
        vectors(users, "interest_b", u),
        users["drift_rate"].to_numpy()[u],
        users["drift_phase"].to_numpy()[u],
        t,
    )
    content = vectors(pins, "content", q)
    if kind == "click":
        return (
            p.click_scale * _rowdot(interest, content).astype(np.float64)
            + users["user_bias"].to_numpy()[u]
            + pins["pin_bias"].to_numpy()[q]
        )
    return conversion_affinity(
        p,
        interest,
        vectors(users, "intent", u),
        content,
        vectors(pins, "conversion_vector", q),
        pins["conversion_bias"].to_numpy()[q],
    ).astype(np.float64)


# ----------------------------------------------------------------------------- the job


def generate_logs(config: GenerateConfig) -> GenerateSummary:
    """Writes ``logs/`` and ``truth/`` under ``config.out`` and returns the summary.

    Each day is written atomically as soon as it is generated, so memory stays flat in
    the number of days.
    """
    from tqdm import tqdm

    validate_config(config)
    started = time.perf_counter()
    out = Path(config.out)
    logs, truth = Workdir(out).logs, Workdir(out).truth
    if config.overwrite:
        for sub in (logs, truth):
            shutil.rmtree(sub, ignore_errors=True)
    logs.mkdir(parents=True, exist_ok=True)
    clean_stale_tmp(logs)

    p = config.world
    world = build_world(config.users, config.pins, config.days, config.seed, p)
    write_truth(truth, world, config)
    state = SimState.empty(config.users, config.pins, p.max_recent_pins)
    totals = {"rows": 0, "clicks": 0, "conversions": 0, "view_through": 0, "active": 0}
    for t in tqdm(range(config.days), desc="generate", unit="day", disable=not config.progress):
        day = config.start + dt.timedelta(days=t)
        rng = np.random.Generator(np.random.PCG64(np.random.SeedSequence([config.seed, 1, t])))
        table, stats = simulate_day(world, state, t, day, rng, config.impressions_per_day)
        write_parquet_atomic(
            table,
            logs / ds(day) / "part-0.parquet",
            # dictionary-encoding 32 floats per row costs 3x the write time and buys little
            use_dictionary=[c for c in table.column_names if c != "pin_content_embedding"],
        )
        totals["rows"] += stats.rows
        totals["clicks"] += stats.clicks
        totals["conversions"] += stats.conversions
        totals["view_through"] += stats.view_through
        totals["active"] += stats.active_users
    return GenerateSummary(
        out=out,
        days=config.days,
        rows=totals["rows"],
        clicks=totals["clicks"],
        conversions=totals["conversions"],
        view_through_conversions=totals["view_through"],
        mean_active_users_per_day=totals["active"] / config.days,
        users_seen=int((state.first_seen_user >= 0).sum()),
        pins_seen=int((state.first_seen_pin >= 0).sum()),
        new_users=int(((state.first_seen_user >= 0) & (world.user_arrive > 0)).sum()),
        new_pins=int(((state.first_seen_pin >= 0) & (world.pin_arrive > 0)).sum()),
        users_with_gap_over_90d=int(state.returned_after_gap.sum()),
        seconds=time.perf_counter() - started,
    )
