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
  of the Pin's content vector and one of the user's interest up to yesterday (the paper's
  user tower reads pretrained representations learned from organic activity, 3.1).

Output under ``--out DIR``: ``logs/ds=YYYY-MM-DD/part-0.parquet`` (the log contract of
DESIGN.md) and ``truth/`` (``users.parquet``, ``pins.parquet``, ``meta.json`` with every
parameter and the exact formulas; `true_affinity` evaluates them).

Determinism: the world comes from ``SeedSequence([seed, 0])`` and day t from
``SeedSequence([seed, 1, t])``, so the same arguments give the same bytes.
"""

from __future__ import annotations

import datetime as dt
import shutil
import time
from pathlib import Path

import numpy as np

from derm_features.core.atomic import clean_stale_tmp, write_parquet_atomic
from derm_features.core.workdir import Workdir, ds
from derm_features.synthetic.config import GenerateConfig, GenerateSummary, validate_config
from derm_features.synthetic.day import SimState, simulate_day
from derm_features.synthetic.truth import write_truth
from derm_features.synthetic.world import build_world


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
            use_dictionary=[c for c in table.column_names if not c.endswith("_embedding")],
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
