"""The latent truth of a generated log (``truth/``) and `true_affinity`, which evaluates it."""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from derm_features.core.arrays import fixed_size_list
from derm_features.core.atomic import atomic_dir
from derm_features.synthetic.config import (
    ADVERTISER_ID_BASE,
    FORMULAS,
    PIN_ID_BASE,
    SURFACES,
    USER_ID_BASE,
    GenerateConfig,
    WorldParams,
)
from derm_features.synthetic.world import (
    COUNTRY_CODES,
    World,
    conversion_affinity,
    interest_at,
    rowdot,
)


def write_truth(truth: Path, w: World, config: GenerateConfig) -> None:
    """Writes the latent world and ``meta.json`` (every parameter, every formula)."""
    with atomic_dir(truth) as tmp:
        users = pa.table(
            {
                "user_id": pa.array(np.arange(len(w.user_bias)) + USER_ID_BASE, pa.int64()),
                "interest_a": fixed_size_list(w.interest_a),
                "interest_b": fixed_size_list(w.interest_b),
                "drift_rate": pa.array(w.drift_rate, pa.float64()),
                "drift_phase": pa.array(w.drift_phase, pa.float64()),
                "intent": fixed_size_list(w.intent),
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
                "content": fixed_size_list(w.content),
                "conversion_vector": fixed_size_list(w.conversion_vector),
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
            p.click_scale * rowdot(interest, content).astype(np.float64)
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
