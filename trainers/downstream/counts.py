"""Point-in-time count features: what a production ranking model knows about an entity.

For an event of user u and Pin p on day t, per entity e in (u, p), from the log's days
strictly before t (the point-in-time rule of DESIGN.md: nothing of day t itself):

    impressions_e, clicks_e, conversions_e        counts over every earlier day of the log
    ctr_e = (clicks_e + m * ctr_0) / (impressions_e + m)          smoothed rates, m = 20
    cvr_e = (conversions_e + m * cvr_0) / (known_e + m)           (known: clicks whose
                                                                   conversion label is set)

ctr_0 and cvr_0 are the log's rates over the same earlier days. The features are
log1p of the three counts and the two rates, 5 per entity, 10 in all (`FEATURES`). They
make the no-DERM downstream model a baseline a team would ship (the paper's downstream
models have id and counting features), and the smoothed per-Pin rate is itself a baseline
(`baselines.entity_rate`).
"""

from __future__ import annotations

import datetime as dt

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from derm_features.core.ids import hash_ids_to_int64

ENTITIES = ("user", "pin")
SMOOTHING = 20.0  # pseudo-impressions of the prior in each smoothed rate
PER_ENTITY = ("log_impressions", "log_clicks", "log_conversions", "ctr", "cvr")
FEATURES = tuple(f"{e}_{f}" for e in ENTITIES for f in PER_ENTITY)


def _days(ts: pa.ChunkedArray | pa.Array) -> np.ndarray:
    """Days since the epoch (int32) of UTC timestamps."""
    micros = pc.cast(pc.cast(ts, pa.timestamp("us", "UTC")), pa.int64())
    return (micros.to_numpy(zero_copy_only=False) // 86_400_000_000).astype(np.int32)


class CountHistory:
    """Daily impressions, clicks and conversions per user and per Pin of a log's days.

    Args:
        log: an opened log (`derm_features.core.logs.open_log`).
        until (dt.date): the last day any lookup will ask for; days up to the one before it
            are read.

    `features(rows)` gives the [n, 10] float32 count features of log rows (`FEATURES`).
    """

    def __init__(self, log, until: dt.date) -> None:
        days = [d for d in log.days() if d < until]
        self.daily: dict[str, pd.DataFrame] = {e: pd.DataFrame() for e in ENTITIES}
        self.prior = (0.0, 0.0)
        if not days:
            return
        columns = ["user_id", "pin_id", "ts", "click", "conversion"]
        table = log.scanner(days[0], days[-1], columns=columns).to_table()
        if table.num_rows == 0:
            return
        conv = table.column("conversion")
        if pa.types.is_null(conv.type):  # a log without any conversion label
            known = np.zeros(table.num_rows, dtype=bool)
            conversions = np.zeros(table.num_rows)
        else:
            known = np.asarray(pc.is_valid(conv), dtype=bool)
            conversions = pc.cast(conv, pa.float64()).fill_null(0.0).to_numpy(zero_copy_only=False)
        clicks = pc.cast(table.column("click"), pa.float64()).to_numpy(zero_copy_only=False)
        frame = pd.DataFrame(
            {
                "day": _days(table.column("ts")),
                "impressions": 1.0,
                "clicks": clicks,
                "known": (known & (clicks > 0)).astype(np.float64),
                "conversions": conversions * (clicks > 0),
            }
        )
        self.prior = (
            float(frame["clicks"].sum() / max(len(frame), 1)),
            float(frame["conversions"].sum() / max(frame["known"].sum(), 1.0)),
        )
        for entity in ENTITIES:
            frame["key"] = hash_ids_to_int64(table.column(f"{entity}_id"))
            daily = frame.groupby(["key", "day"], sort=True).sum().reset_index()
            # cumulative through each day; a lookup on day t takes the row of the last day < t
            cols = ["impressions", "clicks", "known", "conversions"]
            daily[cols] = daily.groupby("key")[cols].cumsum()
            # stored one day later: "known before day d" is the cumulative through d - 1
            daily["day"] = daily["day"] + 1
            self.daily[entity] = daily.sort_values("day", kind="stable")

    def entity_counts(self, entity: str, keys: np.ndarray, days: np.ndarray) -> np.ndarray:
        """[n, 4] (impressions, clicks, known, conversions) of `keys` before `days`."""
        daily = self.daily[entity]
        out = np.zeros((len(keys), 4))
        if daily.empty or not len(keys):
            return out
        query = pd.DataFrame(
            {"key": keys, "day": days.astype(np.int32), "row": np.arange(len(keys))}
        )
        merged = pd.merge_asof(
            query.sort_values("day", kind="stable"), daily, on="day", by="key",
            direction="backward", allow_exact_matches=True,
        )  # fmt: skip
        cols = ["impressions", "clicks", "known", "conversions"]
        values = merged[cols].fillna(0.0).to_numpy()
        out[merged["row"].to_numpy()] = values
        return out

    def features(self, rows: pa.Table) -> np.ndarray:
        """[n, 10] float32: per user then Pin, log1p counts and smoothed rates (`FEATURES`)."""
        days = _days(rows.column("ts"))
        ctr0, cvr0 = self.prior
        parts = []
        for entity in ENTITIES:
            keys = hash_ids_to_int64(rows.column(f"{entity}_id"))
            imp, clk, known, conv = self.entity_counts(entity, keys, days).T
            parts += [
                np.log1p(imp),
                np.log1p(clk),
                np.log1p(conv),
                (clk + SMOOTHING * ctr0) / (imp + SMOOTHING),
                (conv + SMOOTHING * cvr0) / (known + SMOOTHING),
            ]
        return np.stack(parts, axis=1).astype(np.float32)
