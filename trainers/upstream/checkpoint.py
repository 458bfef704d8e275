"""Upstream snapshots: `checkpoints/<model>/<YYYY-MM-DD>.ckpt`, one per trained day.

A snapshot is a plain `torch.save` of a dict of tensors, strings, numbers and lists, so it
loads with `torch.load(weights_only=True)` (no pickled code runs):

    format            "derm-upstream-v1"
    model             "ctr" | "cvr"
    model_version     str(ModelVersion): model, lineage, D, day
    model_config      ModelConfig.to_dict()
    feature_signature DERMModel.feature_signature() (schema, D, batch layout)
    train_range       [first day, last day] of the data this snapshot last trained on
    seed              the run's seed
    metrics           the validation metrics printed by `derm train`
    state_dict        weights, temperature and the frequency estimator's buffers

We save and load snapshots ourselves (no Lightning ckpt_path resume) so an incremental day
starts from the weights with a fresh optimiser and a fresh epoch counter (paper B.2).
"""

from __future__ import annotations

import datetime as dt
import os
import uuid
from dataclasses import dataclass
from pathlib import Path

import torch

from derm_features.core.logs import LogSchema
from derm_features.core.provenance import ModelVersion
from derm_features.core.workdir import Workdir
from trainers.upstream.config import ModelConfig
from trainers.upstream.model import DERMModel

FORMAT = "derm-upstream-v1"
REQUIRED_KEYS = (
    "format",
    "model",
    "model_version",
    "model_config",
    "feature_signature",
    "train_range",
    "state_dict",
)


class CheckpointError(ValueError):
    """A snapshot is missing, unreadable or does not fit the log / config at hand."""


@dataclass(frozen=True)
class Snapshot:
    path: Path
    model: str
    version: ModelVersion
    model_cfg: ModelConfig
    feature_signature: dict
    train_range: tuple[dt.date, dt.date]
    state_dict: dict
    seed: int
    metrics: dict


def save_snapshot(
    path: Path,
    model: str,
    version: ModelVersion,
    model_cfg: ModelConfig,
    feature_signature: dict,
    train_range: tuple[dt.date, dt.date],
    state_dict: dict,
    seed: int,
    metrics: dict,
) -> None:
    """Writes the snapshot atomically (temporary sibling + rename); re-running replaces it."""
    payload = {
        "format": FORMAT,
        "model": model,
        "model_version": str(version),
        "model_config": model_cfg.to_dict(),
        "feature_signature": feature_signature,
        "train_range": [train_range[0].isoformat(), train_range[1].isoformat()],
        "seed": seed,
        "metrics": metrics,
        "state_dict": {k: v.detach().cpu() for k, v in state_dict.items()},
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".tmp-{path.name}-{uuid.uuid4().hex[:8]}")
    try:
        torch.save(payload, tmp)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def load_snapshot(path: Path) -> Snapshot:
    """Reads a snapshot with torch's weights_only safety; errors name the file and the key."""
    if not path.is_file():
        raise CheckpointError(f"{path}: no such checkpoint")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any unreadable file is rejected the same way
        raise CheckpointError(f"{path}: not a readable DERM checkpoint ({exc})") from None
    if not isinstance(payload, dict):
        raise CheckpointError(f"{path}: not a DERM checkpoint (expected a dict)")
    missing = [k for k in REQUIRED_KEYS if k not in payload]
    if missing:
        raise CheckpointError(f"{path}: not a DERM checkpoint, missing key(s) {missing}")
    if payload["format"] != FORMAT:
        raise CheckpointError(f"{path}: format '{payload['format']}', expected '{FORMAT}'")
    try:
        version = ModelVersion.parse(payload["model_version"])
        model_cfg = ModelConfig.from_dict(payload["model_config"])
    except (TypeError, ValueError) as exc:
        raise CheckpointError(f"{path}: {exc}") from None
    first, last = (dt.date.fromisoformat(d) for d in payload["train_range"])
    return Snapshot(
        path=path,
        model=payload["model"],
        version=version,
        model_cfg=model_cfg,
        feature_signature=payload["feature_signature"],
        train_range=(first, last),
        state_dict=payload["state_dict"],
        seed=int(payload.get("seed", 0)),
        metrics=payload.get("metrics", {}),
    )


def snapshot_days(workdir: Workdir, model: str) -> list[dt.date]:
    """Days that have a snapshot of `model`, sorted."""
    directory = workdir.checkpoints_dir(model)
    days = []
    if directory.is_dir():
        for file in directory.glob("*.ckpt"):
            try:
                days.append(dt.date.fromisoformat(file.stem))
            except ValueError:
                continue
    return sorted(days)


def newest_before(workdir: Workdir, model: str, day: dt.date) -> Path:
    """The newest snapshot strictly before `day` (the warm start of an incremental day)."""
    earlier = [d for d in snapshot_days(workdir, model) if d < day]
    if not earlier:
        raise CheckpointError(
            f"no {model} checkpoint before {day} in {workdir.checkpoints_dir(model)}: "
            "fit a window first (derm train --start ... --end ...)"
        )
    return workdir.checkpoint(model, earlier[-1])


def _differences(ours: dict, theirs: dict, prefix: str = "") -> list[str]:
    keys = []
    for key in sorted(set(ours) | set(theirs)):
        a, b = ours.get(key), theirs.get(key)
        if isinstance(a, dict) and isinstance(b, dict):
            keys += _differences(a, b, f"{prefix}{key}.")
        elif a != b:
            keys.append(f"{prefix}{key}")
    return keys


def check_fits(
    snapshot: Snapshot,
    schema: LogSchema,
    log_path: Path,
    model: str,
    model_cfg: ModelConfig | None = None,
) -> None:
    """Raises CheckpointError naming both sides when the snapshot does not fit.

    Checks the model name, D against `model_cfg` (when one is given) and the feature
    signature against what this log's schema would build.
    """
    if snapshot.model != model:
        raise CheckpointError(f"{snapshot.path} is a '{snapshot.model}' model, not '{model}'")
    cfg_dim = snapshot.model_cfg.embedding_dim
    if model_cfg is not None and model_cfg.embedding_dim != cfg_dim:
        raise CheckpointError(
            f"{snapshot.path} has embedding dim D={cfg_dim}, the config asks for "
            f"D={model_cfg.embedding_dim}"
        )
    expected = DERMModel(schema, model_cfg or snapshot.model_cfg).feature_signature()
    diff = _differences(snapshot.feature_signature, expected)
    if diff:
        shown = ", ".join(diff[:5]) + (" ..." if len(diff) > 5 else "")
        raise CheckpointError(
            f"{snapshot.path} was trained on other features than the log {log_path} provides "
            f"(differs in: {shown}); checkpoint schema "
            f"{_feature_names(snapshot.feature_signature)} vs log schema "
            f"{_feature_names(expected)}"
        )


def _feature_names(signature: dict) -> list[str]:
    return [f"{f['name']}:{f['kind']}" for f in signature.get("schema", {}).get("features", [])] + [
        f"D={signature.get('embedding_dim')}"
    ]
