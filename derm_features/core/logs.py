"""The ad-log contract (DESIGN.md, "Log schema") and the one way to open a log.

A log is a Parquet file or a directory of them (hive ``ds=YYYY-MM-DD`` partitions allowed),
one row per impression:

    user_id, pin_id   signed integers (int8..int64) or UTF-8 strings, never null; one type
                      in every file (uint64 and invalid UTF-8 are refused by name)
    ts                timestamp with time zone UTC (s, ms, us, or ns in whole
                      microseconds), never null; a file under ``ds=D`` holds only rows
                      whose ts falls on day D (the event time decides the day)
    click             0/1, never null
    conversion        0/1, null where unknown
    <label>           0/1, null where unknown: each further label column the DERM spec
                      names for an upstream model (e.g. `save`), required when named
    surface           optional string
    user_* pin_* ctx_* features, routed to the user, Pin and interaction towers;
                      the Arrow type picks the encoder:
                        integer or string           -> categorical (hashed embedding)
                        float                       -> dense
                        list of integer             -> sequence (e.g. recent Pins)
                        fixed-size list of float    -> pretrained embedding

Every consumer calls `open_log` before it reads a log, so a log that breaks the contract
is rejected before any work starts, with a `LogContractError` naming the file, the column,
the first bad row and the rule broken.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as pads
import pyarrow.parquet as pq

from derm_features.core.files import parquet_files

REQUIRED = ("user_id", "pin_id", "ts", "click", "conversion")
BASE_LABELS = ("click", "conversion")
TOWER_PREFIXES = {"user_": "user", "pin_": "pin", "ctx_": "ctx"}
PARTITION_COLUMN = "ds"

CATEGORICAL, DENSE, SEQUENCE, PRETRAINED = "categorical", "dense", "sequence", "pretrained"


class LogContractError(ValueError):
    """A log breaks the contract. The message names file, column, row and rule."""


@dataclass(frozen=True)
class FeatureSpec:
    """One feature column: which tower reads it and which encoder it gets."""

    name: str
    tower: str  # "user" | "pin" | "ctx"
    kind: str  # categorical | dense | sequence | pretrained
    dim: int = 0  # pretrained embeddings only: the vector length


@dataclass(frozen=True)
class LogSchema:
    """What a validated log holds; models are built from it (and checked against it)."""

    id_type: str  # "int64" | "string"
    features: tuple[FeatureSpec, ...]
    has_surface: bool = False
    extra_labels: tuple[str, ...] = ()  # label columns beyond click and conversion

    def tower(self, tower: str) -> tuple[FeatureSpec, ...]:
        return tuple(f for f in self.features if f.tower == tower)

    def to_dict(self) -> dict:
        d = {
            "id_type": self.id_type,
            "has_surface": self.has_surface,
            "features": [f.__dict__ for f in self.features],
        }
        if self.extra_labels:
            d["extra_labels"] = list(self.extra_labels)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> LogSchema:
        return cls(
            id_type=d["id_type"],
            has_surface=d.get("has_surface", False),
            features=tuple(FeatureSpec(**f) for f in d["features"]),
            extra_labels=tuple(d.get("extra_labels", ())),
        )


@dataclass(frozen=True)
class Log:
    """A validated log: its dataset, its schema and where it came from."""

    path: Path
    files: tuple[Path, ...]
    schema: LogSchema
    partitioned: bool = False
    dataset: pads.Dataset = field(repr=False, compare=False, default=None)

    def columns(self) -> list[str]:
        return (
            ["user_id", "pin_id", "ts", *BASE_LABELS, *self.schema.extra_labels]
            + (["surface"] if self.schema.has_surface else [])
            + [f.name for f in self.schema.features]
        )

    def scanner(
        self,
        start: dt.date | None = None,
        end: dt.date | None = None,
        columns: list[str] | None = None,
        batch_size: int = 65_536,
        use_threads: bool = True,
    ) -> pads.Scanner:
        """Streams the rows with `start` <= day(ts) <= `end` (both inclusive, UTC).

        `use_threads=False` decodes on the caller's thread: a training loop wants that,
        since Arrow's read-ahead threads otherwise preempt torch's on a small machine.
        """
        return self.dataset.scanner(
            columns=columns or self.columns(),
            filter=day_filter(start, end, self.partitioned),
            batch_size=batch_size,
            use_threads=use_threads,
        )

    def days(self) -> list[dt.date]:
        """The days that hold at least one impression, sorted."""
        days: set[dt.date] = set()
        for batch in self.dataset.to_batches(columns=["ts"]):
            if batch.num_rows:
                d = pc.unique(pc.cast(pc.cast(batch.column("ts"), pa.timestamp("us")), pa.date32()))
                days.update(d.to_pylist())
        return sorted(days)


def day_filter(start: dt.date | None, end: dt.date | None, partitioned: bool = False):
    """A dataset filter on ``ts`` (and on ``ds`` partitions, for pruning)."""
    expr = None

    def both(a, b):
        return b if a is None else a & b

    ts = pc.field("ts")
    if start is not None:
        lo = dt.datetime.combine(start, dt.time(), tzinfo=dt.UTC)
        expr = both(expr, ts >= pa.scalar(lo, pa.timestamp("us", "UTC")))
        if partitioned:
            expr = both(expr, pc.field(PARTITION_COLUMN) >= start.isoformat())
    if end is not None:
        hi = dt.datetime.combine(end + dt.timedelta(days=1), dt.time(), tzinfo=dt.UTC)
        expr = both(expr, ts < pa.scalar(hi, pa.timestamp("us", "UTC")))
        if partitioned:
            expr = both(expr, pc.field(PARTITION_COLUMN) <= end.isoformat())
    return expr


def log_files(path: str | Path) -> list[Path]:
    """The Parquet files of a log: the file itself, or its data files (`parquet_files`)."""
    path = Path(path)
    try:
        files = parquet_files(path)
    except FileNotFoundError:
        raise LogContractError(f"{path}: no such file or directory") from None
    if not files:
        raise LogContractError(f"{path}: directory holds no *.parquet files")
    return files


def _is_int(t: pa.DataType) -> bool:
    return pa.types.is_integer(t)


def _is_str(t: pa.DataType) -> bool:
    return pa.types.is_string(t) or pa.types.is_large_string(t)


def classify_feature(name: str, t: pa.DataType) -> FeatureSpec | str:
    """The FeatureSpec of a feature column, or the rule it breaks (as a string)."""
    tower = next((tw for prefix, tw in TOWER_PREFIXES.items() if name.startswith(prefix)), None)
    if tower is None:
        return (
            "a column that is not a required one must be a feature named user_*, pin_* or ctx_*"
            " (or the optional 'surface')"
        )
    if _is_int(t) or _is_str(t) or pa.types.is_dictionary(t):
        return FeatureSpec(name, tower, CATEGORICAL)
    if pa.types.is_floating(t):
        return FeatureSpec(name, tower, DENSE)
    if pa.types.is_fixed_size_list(t) and pa.types.is_floating(t.value_type):
        return FeatureSpec(name, tower, PRETRAINED, dim=t.list_size)
    if (pa.types.is_list(t) or pa.types.is_large_list(t)) and _is_int(t.value_type):
        return FeatureSpec(name, tower, SEQUENCE)
    return (
        f"type {t} has no encoder: use integer/string (categorical), float (dense), "
        "list<int> (sequence) or fixed_size_list<float> (pretrained embedding)"
    )


def _schema_of_file(file: Path, schema: pa.Schema, extra_labels: tuple[str, ...] = ()) -> LogSchema:
    names = set(schema.names)
    for col in REQUIRED:
        if col not in names:
            raise LogContractError(f"{file}: column '{col}' is missing (required: {REQUIRED})")
    for col in extra_labels:
        if col not in names:
            raise LogContractError(
                f"{file}: label column '{col}' is missing (the DERM spec's label of a model)"
            )
    id_types = set()
    for col in ("user_id", "pin_id"):
        t = schema.field(col).type
        if pa.types.is_uint64(t):
            raise LogContractError(
                f"{file}: column '{col}' has type uint64; ids must fit a signed int64 (cast "
                "the column to int64 when every id is below 2^63) or be strings"
            )
        if _is_int(t):
            id_types.add("int64")
        elif _is_str(t):
            id_types.add("string")
        else:
            raise LogContractError(
                f"{file}: column '{col}' has type {t}; ids must be int64 or string"
            )
    if len(id_types) > 1:
        raise LogContractError(
            f"{file}: columns 'user_id' and 'pin_id' must share one id type (int64 or string)"
        )
    ts = schema.field("ts").type
    if not pa.types.is_timestamp(ts):
        raise LogContractError(f"{file}: column 'ts' has type {ts}; it must be a timestamp")
    if ts.tz is None:
        raise LogContractError(
            f"{file}: column 'ts' has no time zone; it must be UTC (if the values are UTC, "
            "write them as pa.timestamp('us', 'UTC'), e.g. pandas' tz_localize('UTC'))"
        )
    if ts.tz not in ("UTC", "utc", "Etc/UTC", "+00:00"):
        raise LogContractError(f"{file}: column 'ts' has time zone '{ts.tz}'; it must be UTC")
    for col in (*BASE_LABELS, *extra_labels):
        t = schema.field(col).type
        if not (_is_int(t) or pa.types.is_boolean(t) or pa.types.is_null(t)):
            raise LogContractError(f"{file}: column '{col}' has type {t}; it must be 0/1 integers")
    if pa.types.is_null(schema.field("click").type):
        raise LogContractError(f"{file}: column 'click' is all null; it must be 0/1 on every row")
    has_surface = "surface" in names
    if has_surface and not _is_str(schema.field("surface").type):
        raise LogContractError(
            f"{file}: column 'surface' has type {schema.field('surface').type}; it must be a string"
        )
    features = []
    for f in schema:
        if f.name in REQUIRED or f.name in (*extra_labels, "surface", PARTITION_COLUMN):
            continue
        spec = classify_feature(f.name, f.type)
        if isinstance(spec, str):
            raise LogContractError(f"{file}: column '{f.name}': {spec}")
        features.append(spec)
    return LogSchema(
        id_type=id_types.pop(),
        features=tuple(features),
        has_surface=has_surface,
        extra_labels=tuple(extra_labels),
    )


def _first_bad_row(mask: pa.ChunkedArray | pa.Array) -> int | None:
    idx = pc.indices_nonzero(pc.fill_null(mask, False))
    return idx[0].as_py() if len(idx) else None


def _partition_day(file: Path) -> dt.date | None:
    """D of the innermost ``ds=D`` directory a file sits in, if any."""
    for part in reversed(file.parts[:-1]):
        if part.startswith(f"{PARTITION_COLUMN}="):
            try:
                return dt.date.fromisoformat(part[len(PARTITION_COLUMN) + 1 :])
            except ValueError:
                raise LogContractError(
                    f"{file}: directory '{part}' is not a day; partitions are ds=YYYY-MM-DD"
                ) from None
    return None


def _check_ids_and_time(file: Path, batch: pa.RecordBatch, offset: int, day) -> None:
    """Invalid UTF-8 string ids, sub-microsecond ts and rows outside their ds= day."""
    for col in ("user_id", "pin_id"):
        arr = batch.column(col)
        if _is_str(arr.type):
            try:
                arr.validate(full=True)
            except pa.ArrowInvalid:
                values = arr.cast(pa.binary()).to_pylist()
                row = next(i for i, v in enumerate(values) if v is not None and not _utf8(v))
                raise LogContractError(
                    f"{file}: column '{col}' row {offset + row}: not valid UTF-8 text; string "
                    "ids must be UTF-8"
                ) from None
    ts = batch.column("ts")
    if ts.type.unit == "ns":
        nanos = pc.cast(ts, pa.int64())
        row = _first_bad_row(
            pc.not_equal(pc.subtract(nanos, pc.multiply(pc.divide(nanos, 1000), 1000)), 0)
        )
        if row is not None:
            raise LogContractError(
                f"{file}: column 'ts' row {offset + row}: {ts[row]} has sub-microsecond "
                "precision; derm keeps microseconds: truncate ts to 'us'"
            )
    if day is not None and len(ts):
        days = pc.cast(pc.cast(ts, pa.timestamp("us")), pa.date32())
        row = _first_bad_row(pc.not_equal(days, pa.scalar(day, pa.date32())))
        if row is not None:
            raise LogContractError(
                f"{file}: column 'ts' row {offset + row}: {ts[row]} is not on {day}, the day "
                f"of its ds={day} partition; the event time decides the day (move the row)"
            )


def _utf8(value: bytes) -> bool:
    try:
        value.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


def _check_values(file: Path, schema: LogSchema, batches: Iterator[pa.RecordBatch]) -> None:
    """Row-level rules, vectorised per batch; raises on the first violation found."""
    offset = 0
    dense = [f.name for f in schema.features if f.kind in (DENSE, PRETRAINED)]
    day = _partition_day(file)
    for batch in batches:
        for col in ("user_id", "pin_id", "ts", "click"):
            row = _first_bad_row(pc.is_null(batch.column(col)))
            if row is not None:
                raise LogContractError(
                    f"{file}: column '{col}' row {offset + row}: null is not allowed"
                )
        _check_ids_and_time(file, batch, offset, day)
        labels = [("click", False), ("conversion", True)]
        for col, nullable in labels + [(c, True) for c in schema.extra_labels]:
            arr = batch.column(col)
            if pa.types.is_null(arr.type) or pa.types.is_boolean(arr.type):
                continue
            bad = pc.invert(pc.is_in(arr, pa.array([0, 1], arr.type)))
            if nullable:
                bad = pc.and_(bad, pc.is_valid(arr))
            row = _first_bad_row(bad)
            if row is not None:
                raise LogContractError(
                    f"{file}: column '{col}' row {offset + row}: "
                    f"value {arr[row].as_py()!r} is not 0 or 1"
                )
        for col in dense:
            arr = batch.column(col)
            values = arr
            if pa.types.is_fixed_size_list(arr.type):
                values = pc.list_flatten(arr)
                size = arr.type.list_size
            bad = pc.invert(pc.is_finite(values))
            row = _first_bad_row(pc.and_(bad, pc.is_valid(values)))
            if row is not None:
                if pa.types.is_fixed_size_list(arr.type):
                    row //= size
                raise LogContractError(
                    f"{file}: column '{col}' row {offset + row}: "
                    "NaN or infinite values are not allowed"
                )
        offset += batch.num_rows


def validate_logs(
    path: str | Path, check_values: bool = True, labels: tuple[str, ...] = BASE_LABELS
) -> LogSchema:
    """Checks a log against the contract and returns its schema; see `open_log`."""
    return open_log(path, check_values=check_values, labels=labels).schema


def open_log(
    path: str | Path, check_values: bool = True, labels: tuple[str, ...] = BASE_LABELS
) -> Log:
    """Validates a log (every file: schema, then values) and opens it as one dataset.

    All files must agree on id type and feature set: a feature missing from one file, or
    typed differently there, is an error naming that file. `labels`: the label columns of
    the DERM spec's models (`DermSpec.labels`); those beyond click and conversion must be
    present, 0/1 or null. Raises LogContractError naming file, column, row and rule.
    """
    path = Path(path)
    extra_labels = tuple(label for label in labels if label not in BASE_LABELS)
    files = log_files(path)
    first: LogSchema | None = None
    for file in files:
        try:
            arrow_schema = pq.read_schema(file)
        except Exception as exc:  # noqa: BLE001 - any unreadable file is rejected the same way
            raise LogContractError(f"{file}: not a readable Parquet file ({exc})") from None
        schema = _schema_of_file(file, arrow_schema, extra_labels)
        if first is None:
            first, first_types = schema, arrow_schema
        for col in ("user_id", "pin_id"):
            if arrow_schema.field(col).type != first_types.field(col).type:
                raise LogContractError(
                    f"{file}: column '{col}' is {arrow_schema.field(col).type} here but "
                    f"{first_types.field(col).type} in {files[0]}: every file of a log must "
                    "store the ids with one type (cast them all to int64)"
                )
        if schema != first:
            ours = {f.name: f for f in schema.features}
            theirs = {f.name: f for f in first.features}
            diff = sorted(set(ours.items()) ^ set(theirs.items()))
            column = diff[0][0] if diff else "user_id"
            raise LogContractError(
                f"{file}: column '{column}' differs from {files[0]}: every file of a log must "
                "have the same feature columns, types and id type"
            )
        if check_values:
            _check_values(file, schema, pq.ParquetFile(file).iter_batches(batch_size=262_144))
    partitioned = path.is_dir() and any(
        part.startswith(f"{PARTITION_COLUMN}=") for f in files for part in f.relative_to(path).parts
    )
    # exactly the files validated above, never a second discovery of the directory
    dataset = pads.dataset(
        [str(f) for f in files],
        format="parquet",
        # the partition column stays a string so the ds filter compares ISO days
        partitioning=pads.partitioning(pa.schema([(PARTITION_COLUMN, pa.string())]), flavor="hive")
        if partitioned
        else None,
        partition_base_dir=str(path) if partitioned else None,
    )
    return Log(
        path=path, files=tuple(files), schema=first, partitioned=partitioned, dataset=dataset
    )
