"""`derm.yaml`: one file for model sizes, D, heuristic, TTL, engine and the Redis address.

Read from ``--config PATH``, else ``./derm.yaml`` when it exists. Precedence, highest first:
command-line flags, environment (`REDIS_URL`, `DERM_WORKDIR`), this file, built-in defaults.
Every key is checked: a typo is an error naming the file, the section and the key.

    workdir: ./data
    redis_url: redis://127.0.0.1:6379
    model:        # trainers.upstream.config.ModelConfig fields
      embedding_dim: 64
      token_dim: 32
    train:        # upstream TrainConfig fields
      batch_size: 1024
      epochs: 1         # at least this many passes ...
      min_steps: 30     # ... and more, up to max_epochs, until a fit takes this many steps
      max_epochs: 10
      replay_days: 6    # an incremental day first replays up to this many earlier days
      threads: 2
    materialize:
      heuristic: ma
      w: 0.8
      ttl_days: 90
      engine: local
    pipeline:
      window_days: 7
      seed: 0
      models: [ctr, cvr]
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path

DEFAULT_FILE = "derm.yaml"
# The type each train: key must have (bool is refused where a number is meant).
TRAIN_TYPES = {
    "batch_size": int, "epochs": int, "min_steps": int, "max_epochs": int, "replay_days": int,
    "threads": int, "shuffle_buffer": int, "num_workers": int,
    "lr": float, "weight_decay": float, "accelerator": str, "devices": (int, str),
}  # fmt: skip
TRAIN_KEYS = set(TRAIN_TYPES)
MATERIALIZE_KEYS = {"heuristic", "w", "ttl_days", "renormalize", "engine", "online"}
PIPELINE_KEYS = {"window_days", "seed", "models", "index"}
TOP_KEYS = {"workdir", "redis_url", "model", "train", "materialize", "pipeline"}


class ConfigError(ValueError):
    """derm.yaml breaks a rule; the message names the file and key."""


def _model_keys() -> set[str]:
    from trainers.upstream.config import ModelConfig

    return {f.name for f in dataclasses.fields(ModelConfig)}


def load_config(path: str | Path | None = None) -> dict:
    """The validated contents of the config file ({} when there is none)."""
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
    check_train(path, data["train"])
    models = data["pipeline"].get("models")
    if models is not None and (not isinstance(models, list) or not models):
        raise ConfigError(f"{path}: pipeline.models must be a non-empty list such as [ctr, cvr]")
    return data


def check_train(path: Path | str, train: dict) -> None:
    """Types and ranges of derm.yaml's train: section, before any work (ConfigError names
    the file and key). Ranges are TrainConfig's own checks."""
    import re

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


def _check_keys(path: Path, where: str, value: dict, allowed: set[str]) -> None:
    unknown = sorted(set(value) - allowed)
    if unknown:
        raise ConfigError(
            f"{path}: unknown key '{unknown[0]}' in {where} (allowed: {', '.join(sorted(allowed))})"
        )


def apply_environment(config: dict) -> None:
    """Sets REDIS_URL / DERM_WORKDIR from the file where the environment does not set them."""
    if config.get("redis_url") and not os.environ.get("REDIS_URL"):
        os.environ["REDIS_URL"] = str(config["redis_url"])
    if config.get("workdir") and not os.environ.get("DERM_WORKDIR"):
        os.environ["DERM_WORKDIR"] = str(config["workdir"])
