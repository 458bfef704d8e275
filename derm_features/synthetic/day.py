"""One simulated day: who is active, which Pins they see, clicks, conversions, features."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

import numpy as np
import pyarrow as pa

from derm_features.core.arrays import fixed_size_list
from derm_features.synthetic.config import (
    ADVERTISER_ID_BASE,
    GAP_DAYS,
    PIN_ID_BASE,
    SURFACES,
    USER_ID_BASE,
)
from derm_features.synthetic.world import (
    COUNTRY_CODES,
    World,
    conversion_affinity,
    interest_at,
    rowdot,
    sigmoid,
)


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
    click_aff = p.click_scale * rowdot(u_vec, p_vec) + w.user_bias[user] + w.pin_bias[pin]
    click_logit = (
        p.click_intercept
        + click_aff
        + np.asarray(p.surface_offsets)[surface]
        - p.position_decay * np.log(position)
        + p.hour_amplitude * np.cos(2 * np.pi * (hour - p.hour_peak) / 24)
    )
    click = rng.random(n) < sigmoid(click_logit)
    conv_logit = p.conversion_intercept + conversion_affinity(
        p, u_vec, w.intent[user], p_vec, w.conversion_vector[pin], w.conversion_bias[pin]
    )
    conv_logit = np.where(click, conv_logit, conv_logit + p.view_through_offset)
    conversion = rng.random(n) < sigmoid(conv_logit)

    order = np.argsort(ts, kind="stable")
    user, pin, ts, click, conversion = (
        user[order],
        pin[order],
        ts[order],
        click[order],
        conversion[order],
    )
    surface, position, hour = surface[order], position[order], hour[order]

    table = _day_table(w, state, t, user, pin, ts, click, conversion, surface, position, hour)
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


def _user_pretrained(w: World, user: np.ndarray, t: int) -> np.ndarray:
    """[n, user_pretrained_dim] float32: the users' representation refreshed up to yesterday.

    Computed once per distinct user, then spread to their rows: a BLAS matmul may round a
    row differently by where it falls in the matrix, and a user has one vector a day."""
    users, rows = np.unique(user, return_inverse=True)
    a, b = w.interest_a[users], w.interest_b[users]
    interest = interest_at(a, b, w.drift_rate[users], w.drift_phase[users], max(t - 1, 0))
    return (interest @ w.user_projection + w.user_pretrained_error[users])[rows]


def _day_table(w, state, t, user, pin, ts, click, conversion, surface, position, hour) -> pa.Table:
    """The day's rows in the log schema; features read the state at the start of the day."""
    n = len(user)
    lengths = state.recent_len[user].astype(np.int64)
    offsets = np.zeros(n + 1, np.int64)
    np.cumsum(lengths, out=offsets[1:])
    row = np.repeat(np.arange(n), lengths)
    slot = np.arange(offsets[-1]) - offsets[row]
    recent_ids = state.recent[user[row], slot] + PIN_ID_BASE
    surface_names = _strings(surface, SURFACES)
    user_pretrained = (
        {"user_pretrained_embedding": fixed_size_list(_user_pretrained(w, user, t))}
        if w.params.user_pretrained_dim
        else {}
    )
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
            **user_pretrained,
            "pin_category": pa.array(w.category[pin], pa.int32()),
            "pin_advertiser_id": pa.array(w.advertiser[pin] + ADVERTISER_ID_BASE, pa.int64()),
            "pin_impressions_7d": pa.array(
                state.pin_impressions.sum(0, dtype=np.int64)[pin], pa.float32()
            ),
            "pin_content_embedding": fixed_size_list(w.pretrained[pin]),
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
