"""The simulated marketplace, drawn once per seed: users, Pins and the affinity formulas."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from derm_features.synthetic.config import GAP_DAYS, WorldParams


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
    # the users' pretrained representation (drawn last, so the arrays above do not move)
    user_projection: np.ndarray  # (d, user_pretrained_dim) float32
    user_pretrained_error: np.ndarray  # (U, user_pretrained_dim) float32, fixed per user


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
    k = p.user_pretrained_dim
    user_projection = rng.standard_normal((d, k)) / math.sqrt(d)
    user_pretrained_error = p.user_pretrained_noise * rng.standard_normal((users, k)) / math.sqrt(d)
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
        user_projection=user_projection.astype(f32),
        user_pretrained_error=user_pretrained_error.astype(f32),
    )


def interest_at(a: np.ndarray, b: np.ndarray, rate: np.ndarray, phase: np.ndarray, t: int):
    """interest(u, t): between ``a`` and ``b``, moving slowly with the day index ``t``."""
    theta = (math.pi / 4) * (1 - np.cos(rate * t + phase))
    return (np.cos(theta)[:, None] * a + np.sin(theta)[:, None] * b).astype(np.float32)


def sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-x))


def rowdot(x: np.ndarray, y: np.ndarray) -> np.ndarray:
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
        p.conversion_scale * rowdot(s * interest + r * intent, s * content + r * conversion_vector)
        + conversion_bias
    )
