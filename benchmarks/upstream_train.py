"""Upstream training throughput: the real Parquet pipeline vs in-memory tensors (the peer).

Both runs train the same UpstreamSystem (default ModelConfig, batch 1024) with the same
Lightning Trainer for the same number of steps; only the input differs:

    pipeline   UpstreamDataModule: Parquet scan -> shuffle buffer -> hashing -> batch dicts
    in-memory  the same batches, encoded beforehand and held as tensors

ratio = pipeline samples/s / in-memory samples/s: near 1.0 means input is not the bottleneck.
Also prints the pipeline alone (decode only, no training).

    .venv/bin/python -m benchmarks.upstream_train                 # generates a 2-day demo log
    .venv/bin/python -m benchmarks.upstream_train --logs data/logs --steps 60 --threads 1
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path


def _timer_callback(warmup: int):
    from lightning.pytorch.callbacks import Callback

    class StepTimer(Callback):
        """Wall time and rows of the training batches after the first `warmup` steps."""

        def __init__(self) -> None:
            self.start = None
            self.rows = 0

        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
            if batch_idx == warmup:
                self.start = time.perf_counter()
            if batch_idx >= warmup:
                self.rows += batch["labels"].shape[0]

        def on_train_end(self, trainer, pl_module) -> None:
            self.seconds = time.perf_counter() - self.start

    return StepTimer()


def fit_throughput(schema, model_cfg, loader_or_data, steps: int, warmup: int, seed: int) -> float:
    """Samples/s of `steps` training steps (the first `warmup` not timed)."""
    import lightning as L

    from trainers.upstream.system import UpstreamSystem

    L.seed_everything(seed, verbose=False)
    system = UpstreamSystem(schema, model_cfg, "ctr")
    timer = _timer_callback(warmup)
    trainer = L.Trainer(
        max_steps=steps,
        max_epochs=1,
        accelerator="auto",
        devices=1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        limit_val_batches=0,
        callbacks=[timer],
    )
    if isinstance(loader_or_data, L.LightningDataModule):
        trainer.fit(system, datamodule=loader_or_data)
    else:
        trainer.fit(system, train_dataloaders=loader_or_data)
    return timer.rows / timer.seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--logs", type=Path, help="a log to read (default: generate 2 demo days)")
    parser.add_argument("--steps", type=int, default=40, help="training steps per run")
    parser.add_argument("--warmup", type=int, default=5, help="untimed first steps")
    parser.add_argument("--batch-size", type=int, default=1024)
    parser.add_argument("--threads", type=int, help="torch threads (default: torch's)")
    parser.add_argument("--accelerator", default="auto")
    args = parser.parse_args()

    import torch
    from torch.utils.data import DataLoader

    from derm_features.core.logs import open_log
    from trainers.upstream.config import ModelConfig
    from trainers.upstream.data import BatchEncoder, LogBatches, UpstreamDataModule

    if args.threads:
        torch.set_num_threads(args.threads)
    tmp = None
    logs = args.logs
    if logs is None:
        from derm_features.synthetic import GenerateConfig, generate_logs

        tmp = tempfile.TemporaryDirectory(prefix="derm-bench-")
        generate_logs(GenerateConfig(out=Path(tmp.name), days=2, progress=False))
        logs = Path(tmp.name) / "logs"
    log = open_log(logs)
    first, last = log.days()[0], log.days()[-1]
    cfg = ModelConfig()
    encoder = BatchEncoder(log.schema, cfg)

    # decode only
    started, rows = time.perf_counter(), 0
    for i, batch in enumerate(LogBatches(log.path, first, last, encoder, args.batch_size, 65_536)):
        rows += batch["labels"].shape[0]
        if i + 1 >= args.steps:
            break
    decode = rows / (time.perf_counter() - started)

    data = UpstreamDataModule(log.path, log.schema, cfg, args.batch_size, train_range=(first, last))
    pipeline = fit_throughput(log.schema, cfg, data, args.steps, args.warmup, seed=0)

    # the peer: the same first `steps` batches, already tensors in memory
    stream = LogBatches(log.path, first, last, encoder, args.batch_size, 65_536, seed=0)
    batches = [b for _, b in zip(range(args.steps), stream, strict=False)]
    in_memory = fit_throughput(
        log.schema, cfg, DataLoader(batches, batch_size=None), args.steps, args.warmup, seed=0
    )

    print(
        f"log {logs} days {first}..{last}; batch {args.batch_size}, {args.steps} steps "
        f"({args.warmup} untimed), torch threads {torch.get_num_threads()}, "
        f"device {'cuda' if torch.cuda.is_available() and args.accelerator != 'cpu' else 'cpu'}"
    )
    print(f"decode only (pipeline, no training): {decode:10.0f} samples/s")
    print(f"train, Parquet pipeline:             {pipeline:10.0f} samples/s")
    print(f"train, in-memory tensors (peer):     {in_memory:10.0f} samples/s")
    print(f"ratio pipeline / in-memory:          {pipeline / in_memory:10.3f}")
    if tmp is not None:
        tmp.cleanup()


if __name__ == "__main__":
    main()
