"""Settings of every command: derm.yaml, the environment and the flags, checked before work.

derm.yaml is read from ``--config PATH``, else ``./derm.yaml`` when it exists. For every key
the precedence is, highest first: a flag the user passed, the environment (`DERM_WORKDIR`,
`REDIS_URL`), the file, the built-in default; a flag left unset never overrides the file.
Every value is checked (keys, types, ranges) before a file is read or a model trained: a
problem is one `SettingsError` naming the flag, or the file and key, and the command exits 2
with nothing written.

    workdir: ./data
    redis_url: redis://127.0.0.1:6379
    spec:         # the DERM spec (derm_features/core/spec.py)
      models: {ctr: click, cvr: conversion}   # upstream model -> its label column
      embedding_dim: 64
      ttl_days: 90
      heuristic: ma
      w: 0.8
    model:        # trainers.upstream.config.ModelConfig fields (token_dim, num_buckets, ...)
      token_dim: 32
    train:        # upstream TrainConfig fields
      batch_size: 1024
      epochs: 2         # at least this many passes ...
      min_steps: 30     # ... and more, up to max_epochs, until a fit takes this many steps
      max_epochs: 10
      replay_days: 6    # an incremental day first replays up to this many earlier days
      threads: 2
    materialize:
      engine: local     # or spark
      online: true      # push each day's changes to Redis
      renormalize: true
    pipeline:
      window_days: 7
      seed: 0
      models: [ctr, cvr]  # which of the spec's models `derm daily`/`backfill` run
      index: true

`model.embedding_dim` and `materialize.heuristic|w|ttl_days` are older spellings of the
spec's keys and are still read (`derm_features.core.spec.spec_from_config`).
"""

from __future__ import annotations

import dataclasses
import os
import re
from dataclasses import dataclass, field, replace
from pathlib import Path

from derm_features.core.spec import ENTITY_NAMES, DermSpec, SpecError, spec_from_config
from derm_features.core.workdir import Workdir, workdir_root

DEFAULT_FILE = "derm.yaml"
# The type each train: key must have (bool is refused where a number is meant).
TRAIN_TYPES = {
    "batch_size": int, "epochs": int, "min_steps": int, "max_epochs": int, "replay_days": int,
    "threads": int, "shuffle_buffer": int, "num_workers": int,
    "lr": float, "weight_decay": float, "accelerator": str, "devices": (int, str), "strategy": str,
}  # fmt: skip
TRAIN_KEYS = set(TRAIN_TYPES)
MATERIALIZE_TYPES = {"renormalize": bool, "engine": str, "online": bool}
PIPELINE_TYPES = {"window_days": int, "seed": int, "models": list, "index": bool}
# heuristic, w and ttl_days: the spec's, under their older spelling
MATERIALIZE_KEYS = set(MATERIALIZE_TYPES) | {"heuristic", "w", "ttl_days"}
PIPELINE_KEYS = set(PIPELINE_TYPES)
TOP_KEYS = {"workdir", "redis_url", "spec", "model", "train", "materialize", "pipeline"}


class SettingsError(ValueError):
    """A flag, an environment variable or derm.yaml breaks a rule; the message names it."""


# The name the rest of the project and the tests know it by.
ConfigError = SettingsError


def _model_keys() -> set[str]:
    from trainers.upstream.config import ModelConfig

    return {f.name for f in dataclasses.fields(ModelConfig)}


def load_config(path: str | Path | None = None) -> dict:
    """The validated contents of the config file ({} when there is none).

    Checks every section's keys, the spec (`spec_from_config`), train: (`check_train`),
    model: (a ModelConfig is built), materialize: and pipeline: (types and ranges).
    """
    import yaml

    explicit = path is not None
    path = Path(path or DEFAULT_FILE)
    if not path.is_file():
        if explicit:
            raise ConfigError(f"--config {path}: no such file")
        return {}
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML ({exc})") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: the top level must be a mapping of sections")
    _check_keys(path, "top level", data, TOP_KEYS)
    sections = {
        "model": _model_keys(),
        "train": TRAIN_KEYS,
        "materialize": MATERIALIZE_KEYS,
        "pipeline": PIPELINE_KEYS,
    }
    for section, allowed in sections.items():
        value = data.get(section) or {}
        if not isinstance(value, dict):
            raise ConfigError(f"{path}: section '{section}' must be a mapping")
        _check_keys(path, f"section '{section}'", value, allowed)
        data[section] = value
    for key in ("workdir", "redis_url"):
        if key in data and not isinstance(data[key], str):
            raise ConfigError(f"{path}: {key} must be a string, got {data[key]!r}")
    try:
        spec = spec_from_config(data, where=str(path))
    except SpecError as exc:
        raise ConfigError(str(exc)) from None
    check_train(path, data["train"])
    _check_model(path, data["model"])
    _check_types(path, "materialize", data["materialize"], MATERIALIZE_TYPES)
    _check_engine(f"{path}: materialize.engine", data["materialize"].get("engine"))
    _check_types(path, "pipeline", data["pipeline"], PIPELINE_TYPES)
    models = data["pipeline"].get("models")
    if models is not None and not models:
        raise ConfigError(f"{path}: pipeline.models must be a non-empty list such as [ctr, cvr]")
    _check_models(f"{path}: pipeline.models", models, spec)
    window = data["pipeline"].get("window_days")
    if window is not None and window < 1:
        raise ConfigError(f"{path}: pipeline.window_days must be >= 1, got {window}")
    return data


def check_train(path: Path | str, train: dict) -> None:
    """Types and ranges of derm.yaml's train: section, before any work (ConfigError names
    the file and key). Ranges are TrainConfig's own checks."""
    from trainers.upstream.config import TrainConfig

    for key, value in train.items():
        want = TRAIN_TYPES[key]
        numeric = want in (int, float)
        ok = isinstance(value, (int, float) if want is float else want) and not (
            numeric and isinstance(value, bool)
        )
        if not ok:
            kind = {int: "an integer", float: "a number", str: "a string"}.get(
                want, "a count or name"
            )
            raise ConfigError(f"{path}: train.{key} must be {kind}, got {value!r}")
    try:
        TrainConfig.check_settings(**train)
    except ValueError as exc:
        message = re.sub(r"--([a-z][a-z-]*)", lambda m: "train." + m.group(1).replace("-", "_"),
                         str(exc))  # fmt: skip
        raise ConfigError(f"{path}: {message}") from None


def _check_model(path: Path, model: dict) -> None:
    from trainers.upstream.config import ModelConfig

    try:
        ModelConfig(**{k: v for k, v in model.items() if k != "embedding_dim"})
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"{path}: model: {exc}") from None


def _check_types(path: Path, section: str, values: dict, types: dict) -> None:
    names = {bool: "true or false", int: "an integer", str: "a string", list: "a list"}
    for key, value in values.items():
        want = types.get(key)
        if want is None:
            continue  # the spec's keys, checked by spec_from_config
        ok = isinstance(value, want) and (want is bool or not isinstance(value, bool))
        if not ok:
            raise ConfigError(f"{path}: {section}.{key} must be {names[want]}, got {value!r}")


def _check_keys(path: Path, where: str, value: dict, allowed: set[str]) -> None:
    unknown = sorted(set(value) - allowed)
    if unknown:
        raise ConfigError(
            f"{path}: unknown key '{unknown[0]}' in {where} (allowed: {', '.join(sorted(allowed))})"
        )


def _check_engine(where: str, engine) -> None:
    from materialize.engines import ENGINES

    if engine is not None and engine not in ENGINES:
        raise SettingsError(f"{where} must be one of {', '.join(ENGINES)}, got '{engine}'")


def _check_models(where: str, models, spec: DermSpec) -> None:
    unknown = [m for m in models or () if m not in spec.models]
    if unknown:
        raise SettingsError(
            f"{where}: unknown model(s) {unknown}; the spec's models are "
            f"{', '.join(spec.model_names)}"
        )


@dataclass(frozen=True)
class Settings:
    """What a command runs with: the work directory (its spec and Redis address included)
    and the sections of derm.yaml with the flags applied, every value checked."""

    workdir: Workdir
    model: dict = field(default_factory=dict)  # ModelConfig fields
    train: dict = field(default_factory=dict)  # TrainConfig fields
    materialize: dict = field(default_factory=dict)  # renormalize, engine, online
    pipeline: dict = field(default_factory=dict)  # window_days, seed, models, index

    @property
    def spec(self) -> DermSpec:
        return self.workdir.spec


# Flags that change a spec value for one run, and the spec key each sets.
SPEC_FLAGS = {"heuristic": "heuristic", "w": "w", "ttl_days": "ttl_days"}
TRAIN_FLAGS = ("threads", "min_steps", "max_epochs", "replay_days")
MATERIALIZE_FLAGS = ("engine", "online", "renormalize")
PIPELINE_FLAGS = ("window_days", "seed", "models", "index")


def resolve_settings(
    config: str | Path | None = None, workdir: str | Path | None = None, **flags
) -> Settings:
    """Settings from derm.yaml (`config`), the environment and the command's `flags`.

    flags: any of --model (one of the spec's models), --entity (user or pin), --heuristic,
    --w, --ttl-days (spec values for this run; a TTL must still equal the registered
    views'), --threads, --min-steps,
    --max-epochs, --replay-days (train:), --engine, --online, --renormalize (materialize:),
    --window-days, --seed, --models (a comma list), --index (pipeline:), by their Python
    names; None means "not given". Raises SettingsError naming the flag or file and key.
    """
    path = Path(config or DEFAULT_FILE)
    data = load_config(config)
    given = {k: v for k, v in flags.items() if v is not None}
    spec = spec_from_config(data, where=str(path))
    for flag, key in SPEC_FLAGS.items():
        if flag in given:
            try:
                spec = replace(spec, **{key: given[flag]})
            except SpecError as exc:
                message = str(exc).split(": ", 1)[1]
                raise SettingsError(f"--{flag.replace('_', '-')}: {message}") from None

    # Before anything heavy (a command's Feast import takes seconds): named as flags.
    if "model" in given and given["model"] not in spec.models:
        raise SettingsError(
            f"--model must be one of {', '.join(spec.model_names)}, got '{given['model']}'"
        )
    if "entity" in given and given["entity"] not in ENTITY_NAMES:
        raise SettingsError(
            f"--entity must be one of {', '.join(ENTITY_NAMES)}, got '{given['entity']}'"
        )

    root = workdir_root(workdir or os.environ.get("DERM_WORKDIR") or data.get("workdir"))
    redis_url = os.environ.get("REDIS_URL") or data.get("redis_url")
    if redis_url is not None:
        from derm_features.feast.redis_url import redacted

        try:
            redacted(redis_url)
        except ValueError as exc:
            source = "REDIS_URL" if os.environ.get("REDIS_URL") else f"{path}: redis_url"
            raise SettingsError(f"{source}: {exc}") from None

    train = {**data.get("train", {}), **{k: given[k] for k in TRAIN_FLAGS if k in given}}
    if any(k in given for k in TRAIN_FLAGS):
        from trainers.upstream.config import TrainConfig

        try:
            TrainConfig.check_settings(**train)  # the flags' ranges, named as flags
        except ValueError as exc:
            raise SettingsError(str(exc)) from None
    materialize = {
        k: v for k, v in data.get("materialize", {}).items() if k in MATERIALIZE_TYPES
    } | {k: given[k] for k in MATERIALIZE_FLAGS if k in given}
    if "engine" in given:
        _check_engine("--engine", given["engine"])
    pipeline = dict(data.get("pipeline", {}))
    pipeline |= {k: given[k] for k in PIPELINE_FLAGS if k in given}
    if "models" in given:
        models = [m.strip() for m in str(given["models"]).split(",") if m.strip()]
        if not models:
            raise SettingsError("--models must name at least one model, e.g. ctr,cvr")
        _check_models("--models", models, spec)
        pipeline["models"] = models
    if "window_days" in given and given["window_days"] < 1:
        raise SettingsError(f"--window-days must be >= 1, got {given['window_days']}")
    if "models" in pipeline:
        pipeline["models"] = tuple(pipeline["models"])
    model = {k: v for k, v in data.get("model", {}).items() if k != "embedding_dim"}
    return Settings(
        workdir=Workdir(root, spec, redis_url),
        model=model,
        train=train,
        materialize=materialize,
        pipeline=pipeline,
    )
