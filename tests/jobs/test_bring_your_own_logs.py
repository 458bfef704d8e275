"""A log written by hand in another shape than the generator's runs through every stage.

String ids, `conversion` all null, no `ctx_` columns, a different feature set: the cvr model
is skipped with a reason, the ctr model trains, materializes and serves, and a downstream
training set finds the embeddings of the string ids through Feast.
"""

from __future__ import annotations

import datetime as dt
import json

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from derm_features.core.ids import hash_ids_to_int64
from derm_features.feast.online_store import EmbeddingReader
from derm_features.feast.repo import feature_store
from derm_features.jobs.pipeline import PipelineConfig, backfill
from trainers.downstream.training_set import TrainingSetConfig, build_training_set

START = dt.date(2026, 3, 1)
DAYS = 4


def write_own_log(root) -> None:
    rng = np.random.default_rng(7)
    for d in range(DAYS):
        n = 3000
        users = rng.integers(0, 300, n)
        pins = rng.integers(0, 120, n)
        seconds = np.sort(rng.integers(0, 86_400, n))
        day = dt.datetime.combine(START + dt.timedelta(days=d), dt.time(), tzinfo=dt.UTC)
        # clicks depend on a hidden user x pin parity, so there is something to learn
        click = ((users + pins) % 7 == 0) & (rng.random(n) < 0.6) | (rng.random(n) < 0.01)
        table = pa.table(
            {
                "user_id": pa.array([f"user-{u}" for u in users]),
                "pin_id": pa.array([f"pin:{p}" for p in pins]),
                "ts": pa.array([day + dt.timedelta(seconds=int(s)) for s in seconds]),
                "click": pa.array(click.astype(np.int64)),
                "conversion": pa.nulls(n, pa.int64()),
                "user_segment": pa.array([f"seg{u % 5}" for u in users]),
                "user_spend": pa.array(rng.gamma(2.0, 10.0, n)),
                "pin_price": pa.array(rng.uniform(1, 100, n).astype(np.float32)),
                "pin_topics": pa.array(
                    [[int(p % 9), int(p % 4)] for p in pins], pa.list_(pa.int32())
                ),
            }
        )
        out = root / f"ds={(START + dt.timedelta(days=d)).isoformat()}"
        out.mkdir(parents=True)
        pq.write_table(table, out / "events.parquet")


def test_own_log_with_string_ids_runs_end_to_end(tmp_path, applied_workdir, redis_url):
    logs = tmp_path / "own_logs"
    write_own_log(logs)
    cfg = PipelineConfig(
        logs=logs,
        workdir=applied_workdir,
        window_days=2,
        train={"batch_size": 512, "threads": 1},
        model={"embedding_dim": 16, "token_dim": 8, "num_buckets": 4096},
        progress=False,
    )
    result = backfill(cfg, START, START + dt.timedelta(days=2))
    window, last = (
        result[str(START + dt.timedelta(days=1))],
        result[str(START + dt.timedelta(days=2))],
    )
    assert window["cvr"]["train"]["skipped"] is True, "no conversion positives: cvr is skipped"
    assert "conversion" in window["cvr"]["train"]["reason"]
    assert "no cvr snapshot" in last["cvr"]["train"]["reason"]
    assert last["ctr"]["materialize_user"]["metrics"]["live"] > 0

    # online: the string id maps to the Feast entity key the pipeline wrote
    reader = EmbeddingReader(feature_store(applied_workdir))
    key = int(hash_ids_to_int64(pa.array(["user-3"]))[0])
    values = reader.read([key], [], ["ctr_user_embedding"])["ctr_user_embedding"]
    assert values[1].tolist() == [True]
    np.testing.assert_allclose(np.linalg.norm(values[0][0]), 1.0, rtol=1e-5)

    # offline: a training set of the last day finds embeddings for the string ids
    ts = build_training_set(
        TrainingSetConfig(
            logs,
            applied_workdir.root,
            START + dt.timedelta(days=3),
            START + dt.timedelta(days=3),
            ("ctr_user", "ctr_pin"),
        )
    )
    table = pq.read_table(ts.path / f"ds={(START + dt.timedelta(days=3)).isoformat()}")
    has_user = table.column("has_ctr_user_embedding").to_numpy()
    assert table.column("user_id").type == pa.string()
    assert has_user.mean() > 0.9, "users seen in the first three days have embeddings"
    meta = json.loads((ts.path / "meta.json").read_text())
    assert meta["schema"]["id_type"] == "string"

    # and a downstream CTR model trains on it (no ctx_ features, string ids)
    from trainers.downstream.job import DownstreamConfig, run_downstream

    metrics = run_downstream(
        DownstreamConfig(
            task="ctr",
            logs=logs,
            workdir=applied_workdir.root,
            train_start=START + dt.timedelta(days=2),
            train_end=START + dt.timedelta(days=2),
            eval_start=START + dt.timedelta(days=3),
            eval_end=START + dt.timedelta(days=3),
            embeddings=("ctr_user", "ctr_pin"),
            epochs=1,
        ),
        progress=False,
    )
    assert 0.0 <= metrics["roc_auc"] <= 1.0 and np.isfinite(metrics["logloss"])
