"""The names of a training set, its error, and the point-in-time cut.

Embedding keys, column names, file formats, `TrainingSetError`, and the instant every event
of a day looks its embeddings up at (DESIGN.md, "Point-in-time rule"; the paper's section
3.2 feeds these embeddings to the downstream CTR and CVR models). An embedding key is
``<model>_<entity>`` as the CLI spells it (``ctr_user``); in a set its vector is the column
named after the Feast view (``ctr_user_embedding``) beside a 0/1 column
``has_ctr_user_embedding``. The cut is `lookup_time`, the day's first microsecond (the
package docstring says why).

The package's leaf: every other module here imports from this one, and it from none of them.
"""

from __future__ import annotations

import datetime as dt

import pyarrow as pa

from derm_features.core.spec import ENTITY_NAMES, DermSpec, view_name


def embedding_keys(spec: DermSpec) -> tuple[str, ...]:
    """Short names of the spec's embeddings, as the CLI spells them: ``<model>_<entity>``."""
    return tuple(f"{model}_{entity}" for model, entity, _ in spec.views())


# The default spec's four: ctr_user, ctr_pin, cvr_user, cvr_pin.
EMBEDDING_KEYS = embedding_keys(DermSpec())
TIMESTAMP = pa.timestamp("us", tz="UTC")
META_FILE = "meta.json"
# File formats of a training set and their file names. Arrow IPC (Feather v2, uncompressed)
# stores a vector column as its float32 buffer, where Parquet encodes a repetition and a
# definition level per float: at D=256 the Parquet write is most of a build, and an Arrow
# file is read back memory-mapped without a copy (BENCHMARKS.md, issue 15 target 3).
FILE_FORMATS = {"parquet": ".parquet", "arrow": ".arrow"}


class TrainingSetError(ValueError):
    """Bad input to the training-set builder; the message names the flag, file or column."""


def check_file_format(value: str, flag: str) -> None:
    """Raises TrainingSetError naming `flag` unless `value` is one of FILE_FORMATS."""
    if value not in FILE_FORMATS:
        raise TrainingSetError(f"{flag} must be one of {', '.join(FILE_FORMATS)}, got '{value}'")


def embedding_view(key: str) -> tuple[str, str, str]:
    """``"ctr_user"`` -> ``("ctr", "user", "ctr_user_embedding")``.

    Checks the form ``<model>_<entity>`` only; whether the spec has the model is checked by
    `parse_embeddings` and `TrainingSetConfig` against their spec.
    """
    model, _, entity = key.rpartition("_")
    if not model or "_" in model or entity not in ENTITY_NAMES:
        raise TrainingSetError(
            f"unknown embedding '{key}': expected <model>_<entity>, e.g. {EMBEDDING_KEYS}"
        )
    return model, entity, view_name(model, entity)


def parse_embeddings(
    text: str, flag: str = "--embeddings", spec: DermSpec | None = None
) -> tuple[str, ...]:
    """``"none"`` -> (); ``"ctr_user,cvr_pin"`` -> those keys, in the spec's order."""
    known = embedding_keys(spec or DermSpec())
    text = (text or "").strip()
    if text.lower() == "none":
        return ()
    keys = [k.strip() for k in text.split(",") if k.strip()]
    if not keys:
        raise TrainingSetError(f"{flag} must be 'none' or a comma list of {known}")
    unknown = [k for k in keys if k not in known]
    if unknown:
        raise TrainingSetError(
            f"{flag}: unknown embedding(s) {unknown}; use 'none' or a comma list of "
            f"{', '.join(known)}"
        )
    return tuple(k for k in known if k in keys)


def embedding_column(key: str) -> str:
    """The training-set column of an embedding: its Feast view name."""
    return embedding_view(key)[2]


def presence_column(key: str) -> str:
    """The 0/1 column saying whether the embedding was found (``has_<view>``)."""
    return f"has_{embedding_view(key)[2]}"


def lookup_time(day: dt.date) -> dt.datetime:
    """The point-in-time cut of every event on `day`: its first microsecond (UTC)."""
    return dt.datetime.combine(day, dt.time(0, 0, 0, 1), tzinfo=dt.UTC)


def cut_micros(day: dt.date) -> int:
    """`lookup_time(day)` as microseconds since the epoch."""
    epoch = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)
    return (lookup_time(day) - epoch) // dt.timedelta(microseconds=1)
