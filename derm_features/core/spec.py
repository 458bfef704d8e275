"""The DERM spec: the one typed description of what a deployment embeds and serves.

Paper section 3.1: upstream models ("towers for entities such as users, Pins and others")
each produce one embedding per entity; appendix C: each embedding is aggregated with a
heuristic and weight w and kept for a TTL. Everything named after them is derived here:

    model m (label column)   entity e (join key)   ->  Feast view  <m>_<e>_embedding
    ctr (click)              user (user_id)             ctr_user_embedding
    cvr (conversion)         pin  (pin_id)              cvr_pin_embedding, ...
                                                        Feast service <m>_ranking

It is read from the ``spec:`` section of derm.yaml (defaults: today's two models x two
entities, D = 64, ``ma`` with w = 0.8, 90 days)::

    spec:
      models: {ctr: click, cvr: conversion, save: save}   # model -> its label column
      embedding_dim: 64
      ttl_days: 90
      heuristic: ma
      w: 0.8

Feature views and services, work-directory paths, CLI choices, training-set columns and
serving validation all come from a `DermSpec`; nothing else lists the models.

Example:
    >>> spec = DermSpec.from_mapping({"models": {"ctr": "click", "save": "save"}})
    >>> spec.model_names, spec.view_name("save", "pin"), spec.label("save")
    (('ctr', 'save'), 'save_pin_embedding', 'save')
"""

from __future__ import annotations

import datetime as dt
import re
from dataclasses import dataclass, field
from pathlib import Path

# The aggregation heuristics of appendix C: accumulate, moving average, average pooling.
HEURISTICS = ("acc", "ma", "ap")
# The two entities the upstream two-tower model embeds (the log contract's id columns).
ENTITY_NAMES = ("user", "pin")
DEFAULT_MODELS = {"ctr": "click", "cvr": "conversion"}
_NAME = re.compile(r"^[a-z][a-z0-9]*$")
DEFAULT_CONFIG_FILE = "derm.yaml"
SPEC_KEYS = ("models", "embedding_dim", "ttl_days", "heuristic", "w")


class SpecError(ValueError):
    """The spec breaks a rule; the message names the key (``spec.<key>``) and the rule."""


def view_name(model: str, entity: str) -> str:
    """The Feast feature view of a model's entity embedding, e.g. ``ctr_user_embedding``."""
    return f"{model}_{entity}_embedding"


# The columns of every offline row and pool row that Feast serves (DESIGN.md).
PUBLISHED_COLUMNS = ("embedding", "last_seen", "model_version")


def feature_name(model: str, entity: str, column: str) -> str:
    """The Feast feature of a published column, unique across views so that a feature
    service of several views works with Feast's default (short) feature names:
    ``("ctr", "user", "embedding")`` -> ``ctr_user_embedding``, ``ctr_user_last_seen``.

    The Parquet files keep the plain column names; each view's source maps them
    (`field_mapping`). Raises ValueError for a column that is not published.
    """
    if column not in PUBLISHED_COLUMNS:
        raise ValueError(f"'{column}' is not a published column {PUBLISHED_COLUMNS}")
    return f"{model}_{entity}_{column}"


def join_key(entity: str) -> str:
    """The entity's join key, ``user_id`` or ``pin_id``."""
    return f"{entity}_id"


def service_name(model: str) -> str:
    """The Feast feature service of the downstream models named after `model`."""
    return f"{model}_ranking"


@dataclass(frozen=True)
class DermSpec:
    """The upstream models (name -> label column), D, TTL and the aggregation of a deployment.

    Raises SpecError (a ValueError) on construction when a value breaks its rule.
    """

    models: dict[str, str] = field(default_factory=lambda: dict(DEFAULT_MODELS))
    embedding_dim: int = 64
    ttl_days: int = 90
    heuristic: str = "ma"
    w: float = 0.8

    def __post_init__(self) -> None:
        check = _Checker("spec")
        check.models(self.models)
        check.integer("embedding_dim", self.embedding_dim, 1, 4096)
        check.integer("ttl_days", self.ttl_days, 0, 3650)
        if self.heuristic not in HEURISTICS:
            raise SpecError(
                f"spec.heuristic: must be one of {', '.join(HEURISTICS)}, got {self.heuristic!r}"
            )
        check.number("w", self.w, 0.0, 1.0)
        object.__setattr__(self, "models", dict(self.models))

    def __hash__(self) -> int:
        return hash(
            (tuple(self.models.items()), self.embedding_dim, self.ttl_days, self.heuristic, self.w)
        )

    @classmethod
    def from_mapping(cls, data: dict | None, where: str = "spec") -> DermSpec:
        """A spec from derm.yaml's ``spec:`` mapping (missing keys take the defaults)."""
        data = dict(data or {})
        unknown = sorted(set(data) - set(SPEC_KEYS))
        if unknown:
            raise SpecError(f"{where}: unknown key(s) {unknown}; known: {', '.join(SPEC_KEYS)}")
        try:
            return cls(**data)
        except SpecError as exc:
            raise SpecError(str(exc).replace("spec.", f"{where}.", 1)) from None

    # ---------------------------------------------------------------- names derived
    @property
    def model_names(self) -> tuple[str, ...]:
        return tuple(self.models)

    @property
    def entity_names(self) -> tuple[str, ...]:
        return ENTITY_NAMES

    @property
    def labels(self) -> tuple[str, ...]:
        """Every label column the upstream models train on, each once, in model order."""
        return tuple(dict.fromkeys(self.models.values()))

    def label(self, model: str) -> str:
        """The label column `model` trains its SSL positives and its head on."""
        self.check_model(model)
        return self.models[model]

    def check_model(self, model: str) -> None:
        """Raises ValueError naming the spec's models when `model` is not one of them."""
        if model not in self.models:
            raise ValueError(f"model must be one of {self.model_names}, got '{model}'")

    def check_model_entity(self, model: str, entity: str) -> None:
        self.check_model(model)
        if entity not in ENTITY_NAMES:
            raise ValueError(f"entity must be one of {ENTITY_NAMES}, got '{entity}'")

    def view_name(self, model: str, entity: str) -> str:
        self.check_model_entity(model, entity)
        return view_name(model, entity)

    def views(self) -> list[tuple[str, str, str]]:
        """(model, entity, view name) of every embedding, models in spec order, user first."""
        return [(m, e, view_name(m, e)) for m in self.models for e in ENTITY_NAMES]

    @property
    def feast_ttl(self) -> dt.timedelta:
        """The views' Feast ttl: `ttl_days` + 1 days (`derm_features.feast.definitions`
        says why it is one day longer than the pool's)."""
        return dt.timedelta(days=self.ttl_days + 1)

    def to_dict(self) -> dict:
        return {
            "models": dict(self.models),
            "embedding_dim": self.embedding_dim,
            "ttl_days": self.ttl_days,
            "heuristic": self.heuristic,
            "w": self.w,
        }


# Where derm.yaml spelled spec values before the spec: section; still read, one value each.
LEGACY_KEYS = {
    ("model", "embedding_dim"): "embedding_dim",
    ("materialize", "heuristic"): "heuristic",
    ("materialize", "w"): "w",
    ("materialize", "ttl_days"): "ttl_days",
}


def spec_from_config(data: dict, where: str = "derm.yaml") -> DermSpec:
    """The spec of a parsed derm.yaml: its ``spec:`` section, plus the older spellings
    ``model.embedding_dim`` and ``materialize.heuristic|w|ttl_days``. A value given in both
    places differently raises SpecError naming both keys."""
    section = data.get("spec") or {}
    if not isinstance(section, dict):
        raise SpecError(f"{where}: section 'spec' must be a mapping")
    merged, spelled = dict(section), {}
    for (old_section, old_key), key in LEGACY_KEYS.items():
        block = data.get(old_section) or {}
        if isinstance(block, dict) and old_key in block:
            if key in merged and merged[key] != block[old_key]:
                raise SpecError(
                    f"{where}: spec.{key} ({merged[key]!r}) and {old_section}.{old_key} "
                    f"({block[old_key]!r}) disagree; keep spec.{key} only"
                )
            merged[key] = block[old_key]
            spelled[key] = f"{old_section}.{old_key}"
    try:
        return DermSpec.from_mapping(merged, where=f"{where}: spec")
    except SpecError as exc:
        message = str(exc)
        for key, old in spelled.items():
            message = message.replace(f"{where}: spec.{key}:", f"{where}: {old}:")
        raise SpecError(message) from None


def load_spec(path: str | Path | None = None) -> DermSpec:
    """The spec of derm.yaml (`path`, default ``./derm.yaml``; see `spec_from_config`); the
    default spec when there is no such file. Raises SpecError naming the file."""
    import yaml

    path = Path(path or DEFAULT_CONFIG_FILE)
    if not path.is_file():
        return DermSpec()
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise SpecError(f"{path}: not valid YAML ({exc})") from None
    return spec_from_config(data if isinstance(data, dict) else {}, where=str(path))


class _Checker:
    def __init__(self, where: str):
        self.where = where

    def integer(self, key: str, value, low: int, high: int) -> None:
        if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
            raise SpecError(
                f"{self.where}.{key}: must be a whole number from {low} to {high}, got {value!r}"
            )

    def number(self, key: str, value, low: float, high: float) -> None:
        ok = isinstance(value, int | float) and not isinstance(value, bool)
        if not ok or not low <= value <= high:
            raise SpecError(
                f"{self.where}.{key}: must be a number from {low} to {high}, got {value!r}"
            )

    def models(self, models) -> None:
        key = f"{self.where}.models"
        if not isinstance(models, dict) or not models:
            raise SpecError(f"{key}: must map each model name to its label column, got {models!r}")
        for name, label in models.items():
            if not isinstance(name, str) or not _NAME.match(name):
                raise SpecError(f"{key}: model name {name!r} must be lowercase letters and digits")
            if not isinstance(label, str) or not re.match(r"^[a-z][a-z0-9_]*$", label):
                raise SpecError(f"{key}.{name}: label {label!r} must be a column name")
            if label.startswith(("user_", "pin_", "ctx_")) or label in ("user_id", "pin_id", "ts"):
                raise SpecError(
                    f"{key}.{name}: label {label!r} is a feature or key column of the log contract"
                )
