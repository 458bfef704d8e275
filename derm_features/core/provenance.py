"""Model versions: which upstream checkpoint an embedding came from, and which can be averaged.

A version string is ``<model>-<lineage>-d<D>@<YYYY-MM-DD>``:

    model    the upstream model of the DERM spec (ctr, cvr, ...)
    lineage  8 hex chars, drawn when an upstream model is trained from scratch (window fit)
             and inherited by every incremental day trained from it
    D        the tower output dimension
    day      the day of the snapshot

Two vectors live in one embedding space only when model, lineage and D agree; the
materializer refuses to average across versions that do not (`compatible`).
"""

from __future__ import annotations

import datetime as dt
import hashlib
import re
from dataclasses import dataclass

_PATTERN = re.compile(r"^([a-z][a-z0-9]*)-([0-9a-f]{8})-d(\d+)@(\d{4}-\d{2}-\d{2})$")


@dataclass(frozen=True)
class ModelVersion:
    model: str
    lineage: str
    dim: int
    day: dt.date

    def __str__(self) -> str:
        return f"{self.model}-{self.lineage}-d{self.dim}@{self.day.isoformat()}"

    @classmethod
    def parse(cls, text: str) -> ModelVersion:
        m = _PATTERN.match(text or "")
        if not m:
            raise ValueError(
                f"model_version '{text}' is not of the form <model>-<8 hex>-d<D>@<YYYY-MM-DD>"
            )
        return cls(m[1], m[2], int(m[3]), dt.date.fromisoformat(m[4]))

    def next_day(self, day: dt.date) -> ModelVersion:
        """The version of an incremental snapshot trained from this one on `day`."""
        return ModelVersion(self.model, self.lineage, self.dim, day)


def new_lineage(*identity: object) -> str:
    """A lineage id for a model trained from scratch, derived from what defines that run
    (model, seed, window, config...): a deterministic re-run gets the same id, and so the
    same weights are recognised as the same space."""
    return hashlib.sha256(repr(identity).encode()).hexdigest()[:8]


def compatible(a: str | ModelVersion, b: str | ModelVersion) -> bool:
    """Whether embeddings of versions `a` and `b` share one space (same model, lineage and D)."""
    va = a if isinstance(a, ModelVersion) else ModelVersion.parse(a)
    vb = b if isinstance(b, ModelVersion) else ModelVersion.parse(b)
    return (va.model, va.lineage, va.dim) == (vb.model, vb.lineage, vb.dim)
