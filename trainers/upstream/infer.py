"""`derm infer`: daily tower outputs of one snapshot (paper B.3).

Snapshot D runs over day D's impressions and writes, for each entity, one row per
occurrence (no dedup here: the materializer keeps the last of the day, DESIGN.md C.1):

    daily/<model>/<entity>/ds=<D>/part-0.parquet
        <entity>_id int64, ts timestamp[us, UTC], embedding fixed_size_list<float32>[D],
        model_version string

Each day directory is replaced atomically, so re-running a day gives the same bytes.
Back inference (opt-in) rewrites days start..D with snapshot D: richer embeddings for the
window days, but they have seen labels from after those days (a leak).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from derm_features.core.atomic import atomic_dir
from derm_features.core.logs import open_log
from derm_features.core.spec import join_key
from derm_features.core.workdir import Workdir


def output_schema(entity: str, dim: int) -> pa.Schema:
    return pa.schema(
        [
            (join_key(entity), pa.int64()),
            ("ts", pa.timestamp("us", "UTC")),
            ("embedding", pa.list_(pa.float32(), dim)),
            ("model_version", pa.string()),
        ]
    )


def output_table(
    entity: str, ids: np.ndarray, ts_us: np.ndarray, embedding: np.ndarray, version: str
) -> pa.Table:
    """One entity's rows of a batch, in the daily-output schema."""
    n, dim = embedding.shape
    values = pa.array(np.ascontiguousarray(embedding, dtype=np.float32).reshape(-1))
    return pa.Table.from_arrays(
        [
            pa.array(ids, pa.int64()),
            pa.array(ts_us, pa.int64()).cast(pa.timestamp("us", "UTC")),
            pa.FixedSizeListArray.from_arrays(values, dim),
            pa.array([version] * n, pa.string()),
        ],
        schema=output_schema(entity, dim),
    )


def _prediction_writer(paths: dict[str, Path], dim: int, version: str):
    """A Lightning callback streaming each predicted batch into one Parquet file per entity."""
    from lightning.pytorch.callbacks import BasePredictionWriter

    class DailyOutputWriter(BasePredictionWriter):
        def __init__(self) -> None:
            super().__init__(write_interval="batch")
            self.writers: dict[str, pq.ParquetWriter] = {}
            self.rows = 0

        def write_on_batch_end(self, trainer, pl_module, prediction, *args) -> None:
            ts = prediction["ts"].cpu().numpy()
            for entity in paths:
                table = output_table(
                    entity,
                    prediction[join_key(entity)].cpu().numpy(),
                    ts,
                    prediction[entity].float().cpu().numpy(),
                    version,
                )
                if entity not in self.writers:
                    self.writers[entity] = pq.ParquetWriter(paths[entity], table.schema)
                self.writers[entity].write_table(table)
            self.rows += len(ts)

        def close(self) -> None:
            for entity in paths:
                if entity not in self.writers:  # a day with no rows still gets its file
                    pq.write_table(output_schema(entity, dim).empty_table(), paths[entity])
                else:
                    self.writers[entity].close()

    return DailyOutputWriter()


def infer(cfg) -> dict:
    """Runs one `derm infer` (cfg: InferConfig); returns a summary dict."""
    import lightning as L

    from trainers import progress_bars, quiet_lightning
    from trainers.upstream.checkpoint import (
        CheckpointError,
        check_fits,
        load_snapshot,
        snapshot_days,
    )
    from trainers.upstream.data import UpstreamDataModule
    from trainers.upstream.system import UpstreamSystem

    log = open_log(cfg.logs, labels=cfg.spec.labels)
    workdir = Workdir.resolve(cfg.workdir)
    path = workdir.checkpoint(cfg.model, cfg.date)
    if not path.is_file():
        have = ", ".join(str(d) for d in snapshot_days(workdir, cfg.model)) or "none"
        raise CheckpointError(
            f"{path}: no {cfg.model} snapshot for {cfg.date} (snapshots: {have}); "
            f"run `derm train --model {cfg.model} --date {cfg.date}` first"
        )
    snapshot = load_snapshot(path)
    check_fits(snapshot, log.schema, log.path, cfg.model)
    system = UpstreamSystem(log.schema, snapshot.model_cfg, cfg.model, models=cfg.spec.models)
    system.load_state_dict(snapshot.state_dict)
    system.eval()
    version = str(snapshot.version)
    dim = snapshot.model_cfg.embedding_dim

    written = {}
    for day in cfg.days:
        data = UpstreamDataModule(
            log.path,
            log.schema,
            snapshot.model_cfg,
            batch_size=cfg.batch_size,
            predict_range=(day, day),
        )
        targets = {e: workdir.daily(cfg.model, e, day) for e in workdir.spec.entity_names}
        with atomic_dir(targets["user"]) as user_dir, atomic_dir(targets["pin"]) as pin_dir:
            tmp = {"user": user_dir / "part-0.parquet", "pin": pin_dir / "part-0.parquet"}
            writer = _prediction_writer(tmp, dim, version)
            quiet_lightning()
            trainer = L.Trainer(
                accelerator="auto",
                devices=1,  # one writer per output file; inference is cheap next to training
                logger=False,
                callbacks=[writer, *progress_bars(cfg.progress)],
                enable_progress_bar=cfg.progress,
                enable_model_summary=False,
                enable_checkpointing=False,
            )
            trainer.predict(system, datamodule=data, return_predictions=False)
            writer.close()
        written[str(day)] = writer.rows
    return {
        "model": cfg.model,
        "model_version": version,
        "back_inference": cfg.back_inference,
        "rows_per_day": written,
        "outputs": {e: str(workdir.daily_dir(cfg.model, e)) for e in workdir.spec.entity_names},
    }
