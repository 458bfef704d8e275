"""Embedding-health metrics of one materialized day, kept in one table per work directory.

`metrics/embedding_health.parquet`: one row per (model, entity, day); re-running a day
replaces its row. Counts follow the kernel's statuses; the day-to-day cosine is taken
between pool(t-1) and pool(t) over the entities updated on day t (carried entities are
identical by construction and would only pull the mean towards 1). Norm statistics are
over the aggregates E(t) of that day (new and updated), before re-normalisation (the
published values are unit then): a tower output has norm ~1, an average of disagreeing
vectors less, so a falling norm_min flags entities whose embedding swings day to day.
`degenerate` counts the day's entities whose E(t) cancelled (or was not finite): they
kept their previous published value instead of publishing a zero (`materialize.kernel`).
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from derm_features.core.atomic import write_parquet_atomic
from derm_features.core.locks import hold_file
from materialize.kernel import CARRIED, EXPIRED, NEW, TIMESTAMP, UPDATED, day_start

HEALTH_FILE = "embedding_health.parquet"
COSINE_QUANTILES = (5, 25, 50, 75, 95)  # percent
KEY = ("model", "entity", "day")


def fold_stats(stats: pa.Table) -> pa.Table:
    """`stats` with its carried and expired rows folded into one row per (status,
    last_seen) that counts them (`rows`); the day's rows (new, updated) kept as they are
    (`rows` 1). `day_metrics` reads both alike. Carried rows are most of a pool and
    `day_metrics` reads only their status and age, so an engine that keeps the stats of
    every bucket (the local one) keeps ~22 bytes an entity less (0.17 GB at 8M entities).
    """
    status = stats["status"].to_numpy(zero_copy_only=False)
    day_rows = (status == NEW) | (status == UPDATED)
    seen = stats.filter(pa.array(day_rows))
    others = ~day_rows
    stamps = pc.cast(stats["last_seen"], TIMESTAMP).to_numpy().view(np.int64)[others]
    # One int64 key per (last_seen, expired or not): a 1-D unique (np.unique over rows of
    # a 2-D key took ~0.1 s a 250k-entity bucket).
    keys, counts = np.unique(stamps * 2 + (status[others] == EXPIRED), return_counts=True)
    n = len(keys)
    folded = pa.table(
        {
            "status": pa.array(np.where(keys & 1, EXPIRED, CARRIED).astype(np.int8)),
            "cosine": pa.nulls(n, stats.schema.field("cosine").type),
            "norm": pa.nulls(n, stats.schema.field("norm").type),
            "degenerate": pa.nulls(n, stats.schema.field("degenerate").type),
            "last_seen": pa.array(keys >> 1, TIMESTAMP),
            "rows": pa.array(counts, pa.int64()),
        }
    )
    seen = seen.select(folded.schema.names[:-1]).cast(folded.schema.remove(5))
    seen = seen.append_column("rows", pa.array(np.ones(seen.num_rows, np.int64)))
    return pa.concat_tables([seen, folded])


def day_metrics(stats: pa.Table, model: str, entity: str, day: dt.date) -> dict:
    """The health row of one day from the engines' per-entity stats.

    stats: `status`, `cosine`, `norm`, `degenerate`, `last_seen`, one row per entity of
    pool(t-1) or daily(t); or folded (`fold_stats`: a `rows` column counts the entities
    of each row).
    coverage: the share of day t's active entities that pool(t-1) already held, i.e. that
    serving had an embedding for on day t; None (undefined, not 0) when pool(t-1) held
    nothing: the first pool day.
    cosine_p5 ... cosine_p95: quantiles of the day-to-day cosine over the updated entities
    (the report draws their spread); None, like the mean, when no entity was updated.
    """
    status = stats["status"].to_numpy(zero_copy_only=False)
    if "rows" in stats.column_names:
        rows = stats["rows"].to_numpy(zero_copy_only=False)
    else:
        rows = np.ones(len(status), dtype=np.int64)
    counts = {
        name: int(rows[status == code].sum())
        for name, code in (
            ("new", NEW),
            ("updated", UPDATED),
            ("carried", CARRIED),
            ("expired", EXPIRED),
        )
    }
    counts["degenerate"] = int(pc.sum(stats["degenerate"]).as_py() or 0)
    live = counts["new"] + counts["updated"] + counts["carried"]
    active = counts["new"] + counts["updated"]
    held_before = counts["updated"] + counts["carried"] + counts["expired"]  # pool(t-1)'s rows
    cosine = pc.drop_null(stats["cosine"]).to_numpy(zero_copy_only=False)
    norm = pc.drop_null(stats["norm"]).to_numpy(zero_copy_only=False)
    seen = pc.cast(stats["last_seen"], TIMESTAMP).to_numpy().view(np.int64)
    stamp = int(day_start(day).timestamp()) * 1_000_000
    carried = status == CARRIED
    age = np.repeat((stamp - seen[carried]) / 86_400_000_000, rows[carried])

    def stat(values: np.ndarray, fn) -> float | None:
        return float(fn(values)) if len(values) else None

    return {
        "model": model,
        "entity": entity,
        "day": day,
        "live": live,
        **counts,
        "active": active,
        "coverage": counts["updated"] / active if active and held_before else None,
        "cosine_mean": stat(cosine, np.mean),
        **{
            f"cosine_p{q}": stat(cosine, lambda v, q=q: np.percentile(v, q))
            for q in COSINE_QUANTILES
        },
        "norm_mean": stat(norm, np.mean),
        "norm_min": stat(norm, np.min),
        "norm_max": stat(norm, np.max),
        "carried_age_mean_days": stat(age, np.mean),
        "carried_age_max_days": stat(age, np.max),
    }


HEALTH_SCHEMA = pa.schema(
    [
        ("model", pa.string()),
        ("entity", pa.string()),
        ("day", pa.date32()),
        ("live", pa.int64()),
        ("new", pa.int64()),
        ("updated", pa.int64()),
        ("carried", pa.int64()),
        ("expired", pa.int64()),
        ("degenerate", pa.int64()),
        ("active", pa.int64()),
        ("coverage", pa.float64()),
        ("cosine_mean", pa.float64()),
        *[(f"cosine_p{q}", pa.float64()) for q in COSINE_QUANTILES],
        ("norm_mean", pa.float64()),
        ("norm_min", pa.float64()),
        ("norm_max", pa.float64()),
        ("carried_age_mean_days", pa.float64()),
        ("carried_age_max_days", pa.float64()),
    ]
)


def record(metrics_dir: Path, row: dict) -> Path:
    """Adds (or replaces) the day's row in the health table, atomically.

    The table is shared by every (model, entity): the read-modify-write holds a lock, so two
    entities materialized at once both keep their row; crash leftovers of the table's own
    temporary files are removed under it.
    """
    path = metrics_dir / HEALTH_FILE
    with hold_file(metrics_dir / f".{HEALTH_FILE}.lock", "a health-table update", wait=True):
        for leftover in metrics_dir.glob(f".tmp-{HEALTH_FILE}-*"):
            leftover.unlink(missing_ok=True)
        new = pa.Table.from_pylist([row], schema=HEALTH_SCHEMA)
        if path.exists():
            old = _with_schema(pq.read_table(path))
            same = pc.and_(
                pc.and_(
                    pc.equal(old["model"], row["model"]), pc.equal(old["entity"], row["entity"])
                ),
                pc.equal(old["day"], pa.scalar(row["day"], pa.date32())),
            )
            new = pa.concat_tables([old.filter(pc.invert(same)), new])
        new = new.sort_by([(k, "ascending") for k in KEY])
        write_parquet_atomic(new, path)
    return path


def _with_schema(table: pa.Table) -> pa.Table:
    """`table` in HEALTH_SCHEMA; a column that a table written by an older derm lacks
    (e.g. `degenerate`) is null, not zero: it was not counted then."""
    columns = [
        table[f.name].cast(f.type) if f.name in table.column_names else pa.nulls(len(table), f.type)
        for f in HEALTH_SCHEMA
    ]
    table = pa.Table.from_arrays(columns, schema=HEALTH_SCHEMA)
    # Older derm wrote coverage 0 on a first pool day; undefined is what `day_metrics` means.
    held_before = pc.add(pc.add(table["updated"], table["carried"]), table["expired"])
    coverage = pc.if_else(
        pc.equal(held_before, 0), pa.scalar(None, pa.float64()), table["coverage"]
    )
    return table.set_column(HEALTH_SCHEMA.get_field_index("coverage"), "coverage", coverage)


def read_health(metrics_dir: Path) -> pa.Table:
    path = metrics_dir / HEALTH_FILE
    return _with_schema(pq.read_table(path)) if path.exists() else HEALTH_SCHEMA.empty_table()


def format_metrics(row: dict) -> str:
    """The day's row as a few readable lines for the CLI."""

    def num(value, spec: str = ".4f") -> str:
        return "-" if value is None else format(value, spec)

    return "\n".join(
        [
            f"embedding health {row['model']}/{row['entity']} {row['day']}:",
            f"  live {row['live']:,}  new {row['new']:,}  updated {row['updated']:,}  "
            f"carried {row['carried']:,}  expired {row['expired']:,}"
            + (
                f"  degenerate {row['degenerate']:,} (kept their previous value)"
                if row.get("degenerate")
                else ""
            ),
            f"  coverage of active entities {num(row['coverage'], '.1%')}  "
            f"day-to-day cosine mean {num(row['cosine_mean'])} p5 {num(row['cosine_p5'])}",
            f"  norm mean {num(row['norm_mean'])} min {num(row['norm_min'])} "
            f"max {num(row['norm_max'])}  carried age days mean "
            f"{num(row['carried_age_mean_days'], '.1f')} "
            f"max {num(row['carried_age_max_days'], '.0f')}",
        ]
    )
