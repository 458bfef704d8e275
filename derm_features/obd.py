"""The Open Bandit Dataset sample -> a derm ad log (`derm convert-obd`).

Source: the Open Bandit Dataset (OBD) of ZOZO, Inc. (ZOZOTOWN fashion e-commerce, 7 days
in late November 2019; Saito et al., "Open Bandit Dataset and Pipeline", NeurIPS 2021
Datasets and Benchmarks), Apache-2.0. Its 60,000-impression sample ships inside the PyPI
wheel ``obp==0.4.1`` under ``obp/dataset/obd/``: two behaviour policies (``bts``:
Bernoulli Thompson sampling, ``random``: uniform) x three campaigns (``all``, ``men``,
``women``), 10,000 impressions each::

    obd/<policy>/<campaign>/<campaign>.csv     one row per impression
        ,timestamp,item_id,position,click,propensity_score,
        user_feature_0..3, user-item_affinity_0..<items-1>
    obd/<policy>/<campaign>/item_context.csv   one row per item of the campaign
        ,item_id,item_feature_0,item_feature_1..3

The wheel is read as a zip file; nothing is installed. The log written follows derm's
log contract (derm_features/core/logs.py), one ``ds=YYYY-MM-DD`` partition per UTC day:

    user_id     string  pseudo-user "u-<16 hex>": a hash of the four user_feature_* values.
                        OBD has no user id, so every user with the same four (coarse,
                        hashed) features is one pseudo-user: 337 of them in the sample.
                        They are user segments rather than people; say so when you
                        read a per-user number off this log.
    pin_id      string  "<campaign>-<item_id>": OBD numbers the items of each campaign
                        from 0, so item 3 of "men" and item 3 of "all" are different items
    ts          timestamp[us, UTC] (the source's +00:00 stamps; days are UTC days, so a
                        day starts at 09:00 in Japan, where ZOZOTOWN's users are)
    click       int64 0/1
    conversion  int64, all null (OBD has no conversions: derm's cvr model skips itself)
    surface     string  the campaign (all / men / women): the page the item was shown on
    user_feature_0..3   string  the source's hashed user features (categorical)
    pin_feature_0       float64 item_feature_0 (a standardised number per campaign)
    pin_feature_1..3    string  item_feature_1..3, re-coded "<campaign>:<k>" (see below)
    ctx_position        int64   the slot (1..3) the item was shown in
    ctx_policy          string  the behaviour policy that chose it (bts / random)
    ctx_user_item_affinity float64  user-item_affinity_<item_id>: the one affinity column
                        that belongs to the shown item (0/1 in the sample)

Left out, and why:
  - the other ``user-item_affinity_*`` columns (80 in the "all" campaign, 34 and 46 in the
    others, so no fixed schema across campaigns): each is the user's affinity to some item
    other than the one shown; they are non-zero on 0.06 % of cells, and the shown item's
    own column carries what a ranking model can use of them (CTR 14 % where it is 1 vs
    0.4 % elsewhere in the sample).
  - ``propensity_score``: the behaviour policy's probability of the logged action, there
    for off-policy evaluation; as a feature it would hand the model the old policy's
    estimate of the item, which a new ranking model does not have at serving time.

Re-coding of item_feature_1..3: the sample hashes these strings with a salt of its own in
each (policy, campaign) file, so the same item gets different hashes under ``bts`` and
``random``. Numbering the distinct values in item-id order per file gives the same codes
under both policies (checked here: pin_feature_0 and the codes of every item must agree
between the policies of a campaign, else `ObdFormatError`). The user features share
their hashes across all six files, so they stay as they are.

Errors: `ObdFormatError` (a ValueError) names the file and, where it applies, the column
(`derm convert-obd` turns it into one line on stderr and exit code 2).
"""

from __future__ import annotations

import hashlib
import io
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

POLICIES = ("bts", "random")
CAMPAIGNS = ("all", "men", "women")
WHEEL_PREFIX = "obp/dataset/obd/"  # where the sample lives inside the obp wheel
USER_FEATURES = tuple(f"user_feature_{i}" for i in range(4))
ITEM_FEATURES = tuple(f"item_feature_{i}" for i in range(4))
AFFINITY = "user-item_affinity_"


class ObdFormatError(ValueError):
    """The source is not the OBD sample's layout; the message names file and column."""


@dataclass(frozen=True)
class ObdSummary:
    """What `convert_obd` wrote: counts over the whole converted log."""

    out: Path
    rows: int
    clicks: int
    users: int  # distinct pseudo-users (see the module docstring)
    pins: int
    days: dict[str, dict[str, int]]  # "YYYY-MM-DD" -> {"rows": n, "clicks": c}
    source_rows: int  # rows in the source before --sample

    def to_dict(self) -> dict:
        return {
            "out": str(self.out),
            "rows": self.rows,
            "clicks": self.clicks,
            "users": self.users,
            "pins": self.pins,
            "days": self.days,
            "source_rows": self.source_rows,
        }


# ----------------------------------------------------------------------------- reading


def open_source(source: Path) -> tuple[Callable[[str], bytes], str]:
    """A reader of the sample's files and how to name them in errors.

    `source` is the ``obp-0.4.1-*.whl`` file (a zip), a folder that holds
    ``obp/dataset/obd/`` (the unpacked wheel), or the ``obd/`` folder itself.
    Returns ``(read, label)``: ``read("bts/all/all.csv")`` gives the file's bytes and
    raises `ObdFormatError` naming the file when it is missing.
    """
    source = Path(source)
    if not source.exists():
        raise ObdFormatError(f"{source}: no such file or directory (expected the obp wheel)")
    if source.is_file():
        if not zipfile.is_zipfile(source):
            raise ObdFormatError(
                f"{source}: not a zip file; pass the obp-0.4.1 wheel or its obd/ folder"
            )
        with zipfile.ZipFile(source) as zf:
            names = set(zf.namelist())

        def read_zip(rel: str) -> bytes:
            member = WHEEL_PREFIX + rel
            if member not in names:
                raise ObdFormatError(f"{source}: file {member} is missing from the wheel")
            with zipfile.ZipFile(source) as zf:
                return zf.read(member)

        return read_zip, str(source)
    root = source / WHEEL_PREFIX if (source / WHEEL_PREFIX).is_dir() else source

    def read_dir(rel: str) -> bytes:
        path = root / rel
        if not path.is_file():
            raise ObdFormatError(f"{path}: file is missing (expected the OBD sample layout)")
        return path.read_bytes()

    return read_dir, str(root)


def _header(data: bytes, where: str) -> list[str]:
    line = data.split(b"\n", 1)[0].decode("utf-8", errors="replace").strip()
    if not line:
        raise ObdFormatError(f"{where}: file is empty")
    return line.split(",")


def _require(columns: list[str], wanted: tuple[str, ...], where: str) -> None:
    for col in wanted:
        if col not in columns:
            raise ObdFormatError(f"{where}: column '{col}' is missing")


def read_csv(data: bytes, where: str, types: dict[str, pa.DataType]) -> pa.Table:
    """The columns `types` of one CSV file, typed; raises `ObdFormatError` naming the file.

    Only those columns are parsed (the 80 affinity columns the caller does not ask for
    are skipped by the reader).
    """
    _require(_header(data, where), tuple(types), where)
    try:
        table = pacsv.read_csv(
            io.BytesIO(data),
            convert_options=pacsv.ConvertOptions(column_types=types, include_columns=list(types)),
        )
    except pa.ArrowInvalid as exc:
        raise ObdFormatError(f"{where}: cannot parse ({exc})") from None
    for col in table.column_names:
        if table.column(col).null_count:
            row = pc.indices_nonzero(pc.is_null(table.column(col)))[0].as_py()
            raise ObdFormatError(f"{where}: column '{col}' is empty on data row {row}")
    return table


def read_items(read: Callable[[str], bytes], label: str, policy: str, campaign: str) -> pa.Table:
    """One campaign's item table, re-coded: item_id, pin_feature_0 float, pin_feature_1..3 str.

    Rows are sorted by item_id; the categorical values are numbered in that order
    (see the module docstring: the sample salts their hashes per file).
    """
    rel = f"{policy}/{campaign}/item_context.csv"
    where = f"{label}: {rel}"
    types = {"item_id": pa.int64(), ITEM_FEATURES[0]: pa.float64()}
    types |= {c: pa.string() for c in ITEM_FEATURES[1:]}
    items = read_csv(read(rel), where, types).sort_by("item_id")
    ids = items.column("item_id").to_numpy()
    if len(np.unique(ids)) != len(ids):
        raise ObdFormatError(f"{where}: column 'item_id' has duplicates")
    out = {
        "item_id": items.column("item_id"),
        "pin_feature_0": items.column(ITEM_FEATURES[0]),
    }
    for i, col in enumerate(ITEM_FEATURES[1:], start=1):
        _, codes = np.unique(items.column(col).to_numpy(zero_copy_only=False), return_inverse=True)
        first_seen = _first_seen_order(codes)
        out[f"pin_feature_{i}"] = pa.array([f"{campaign}:{first_seen[c]}" for c in codes])
    return pa.table(out)


def _first_seen_order(codes: np.ndarray) -> dict[int, int]:
    """Maps each code to the rank of its first appearance (so salted hashes get equal codes)."""
    order: dict[int, int] = {}
    for c in codes.tolist():
        order.setdefault(c, len(order))
    return order


def check_items_agree(a: pa.Table, b: pa.Table, where: str) -> None:
    """Raises unless two policies' re-coded item tables of one campaign are the same items."""
    for col in a.column_names:
        if not a.column(col).equals(b.column(col)):
            raise ObdFormatError(
                f"{where}: column '{col}' differs between the policies after re-coding; "
                "they do not describe the same items"
            )


def pseudo_user_ids(features: list[pa.ChunkedArray]) -> pa.Array:
    """Per row "u-<16 hex>": blake2b of the four user feature values joined by '|'.

    Stable across runs and machines (no Python hash()); computed once per distinct tuple.
    """
    keys = pc.binary_join_element_wise(*features, "|").to_pylist()
    digest = {k: "u-" + hashlib.blake2b(k.encode(), digest_size=8).hexdigest() for k in set(keys)}
    return pa.array([digest[k] for k in keys], pa.string())


def read_impressions(
    read: Callable[[str], bytes], label: str, policy: str, campaign: str, items: pa.Table
) -> pa.Table:
    """One (policy, campaign) file as log rows (the columns of the module docstring)."""
    rel = f"{policy}/{campaign}/{campaign}.csv"
    where = f"{label}: {rel}"
    data = read(rel)
    item_list = items.column("item_id").to_pylist()
    affinity = tuple(f"{AFFINITY}{i}" for i in item_list)  # one per item, named by its id
    types = {
        "timestamp": pa.timestamp("us", "UTC"),
        "item_id": pa.int64(),
        "position": pa.int64(),
        "click": pa.int64(),
        **{c: pa.string() for c in USER_FEATURES},
        **{c: pa.float64() for c in affinity},
    }
    raw = read_csv(data, where, types)
    item_ids = raw.column("item_id").to_numpy()
    row_of = {i: r for r, i in enumerate(item_list)}
    unknown = sorted(set(item_ids.tolist()) - set(row_of))
    if unknown:
        raise ObdFormatError(
            f"{where}: column 'item_id' has {unknown[0]}, which is not in item_context.csv"
        )
    rows = np.array([row_of[i] for i in item_ids.tolist()], dtype=np.int64)
    # the shown item's own affinity column: one float per row out of one column per item
    aff = np.column_stack([raw.column(c).to_numpy() for c in affinity])
    shown = aff[np.arange(raw.num_rows), rows]
    item_rows = pa.array(rows)
    n = raw.num_rows
    return pa.table(
        {
            "user_id": pseudo_user_ids([raw.column(c) for c in USER_FEATURES]),
            "pin_id": pa.array([f"{campaign}-{i}" for i in item_ids.tolist()], pa.string()),
            "ts": raw.column("timestamp"),
            "click": raw.column("click"),
            "conversion": pa.nulls(n, pa.int64()),
            "surface": pa.array([campaign] * n, pa.string()),
            **{c: raw.column(c) for c in USER_FEATURES},
            **{
                c: items.column(c).take(item_rows)
                for c in items.column_names
                if c.startswith("pin_")
            },
            "ctx_position": raw.column("position"),
            "ctx_policy": pa.array([policy] * n, pa.string()),
            "ctx_user_item_affinity": pa.array(shown, pa.float64()),
        }
    )


def read_obd(source: Path) -> pa.Table:
    """All six (policy, campaign) files of the sample as one log table, sorted by ts.

    Shape: 60,000 rows for obp 0.4.1's sample. Raises `ObdFormatError` for a missing
    file or column, or item tables that disagree between the policies.
    """
    read, label = open_source(source)
    parts = []
    for campaign in CAMPAIGNS:
        items = {p: read_items(read, label, p, campaign) for p in POLICIES}
        check_items_agree(items[POLICIES[0]], items[POLICIES[1]], f"{label}: */{campaign}")
        for policy in POLICIES:
            parts.append(read_impressions(read, label, policy, campaign, items[policy]))
    table = pa.concat_tables(parts)
    return table.take(pc.sort_indices(table, [("ts", "ascending"), ("pin_id", "ascending")]))


# ----------------------------------------------------------------------------- writing


def sample_rows(table: pa.Table, rows: int, seed: int) -> pa.Table:
    """`rows` rows drawn uniformly without replacement (seeded), in their original order.

    Uniform, not stratified by click: the slice keeps the sample's click rate and days.
    """
    if rows < 1:
        raise ValueError(f"--sample must be >= 1, got {rows}")
    if rows >= table.num_rows:
        return table
    keep = np.sort(np.random.default_rng(seed).choice(table.num_rows, rows, replace=False))
    return table.take(pa.array(keep))


def day_column(table: pa.Table) -> pa.Array:
    """The UTC day of each row's ts, as date32."""
    return pc.cast(pc.cast(table.column("ts"), pa.timestamp("us")), pa.date32())


def write_log(table: pa.Table, out: Path, overwrite: bool) -> None:
    """Writes one ``ds=YYYY-MM-DD/part-0.parquet`` per day; replaces `out` as a whole.

    Raises ValueError when `out` holds files and `overwrite` is False.
    """
    from derm_features.core.atomic import atomic_dir
    from derm_features.core.workdir import ds

    out = Path(out)
    if out.exists() and not out.is_dir():
        raise ValueError(f"--out must be a directory, but {out} is a file")
    if not overwrite and out.is_dir() and any(not p.name.startswith(".") for p in out.iterdir()):
        raise ValueError(f"--out {out} is not empty; choose an empty directory or pass --overwrite")
    days = day_column(table)
    with atomic_dir(out) as tmp:
        for day in pc.unique(days).to_pylist():
            part = table.filter(pc.equal(days, pa.scalar(day, pa.date32())))
            path = tmp / ds(day) / "part-0.parquet"
            path.parent.mkdir(parents=True)
            pq.write_table(part, path, compression="zstd")


def summarise(table: pa.Table, out: Path, source_rows: int) -> ObdSummary:
    days = day_column(table)
    per_day = {}
    for day in sorted(pc.unique(days).to_pylist()):
        mask = pc.equal(days, pa.scalar(day, pa.date32()))
        clicks = table.column("click").filter(mask)
        per_day[day.isoformat()] = {"rows": len(clicks), "clicks": int(pc.sum(clicks).as_py())}
    return ObdSummary(
        out=out,
        rows=table.num_rows,
        clicks=int(pc.sum(table.column("click")).as_py()),
        users=len(pc.unique(table.column("user_id"))),
        pins=len(pc.unique(table.column("pin_id"))),
        days=per_day,
        source_rows=source_rows,
    )


def convert_obd(
    source: Path,
    out: Path,
    sample: int | None = None,
    seed: int = 0,
    overwrite: bool = False,
) -> ObdSummary:
    """Converts the OBD sample at `source` into a derm log at `out`, validated.

    `sample`: keep that many rows, drawn uniformly (seeded by `seed`); None keeps all.
    Raises `ObdFormatError` (bad source), ValueError (bad arguments, non-empty `out`)
    and, if the written log broke the contract, `LogContractError`.
    """
    from derm_features.core.logs import open_log

    table = read_obd(source)
    source_rows = table.num_rows
    if sample is not None:
        table = sample_rows(table, sample, seed)
    write_log(table, out, overwrite)
    open_log(out)  # the contract's own check of what was written
    return summarise(table, Path(out), source_rows)
