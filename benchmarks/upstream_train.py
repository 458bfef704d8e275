"""Upstream training throughput: the real Parquet pipeline vs in-memory tensors (the peer).

Both runs train the same UpstreamSystem (default ModelConfig, batch 1024) with the same
Lightning Trainer for the same number of steps; only the input differs:

    pipeline   UpstreamDataModule: Parquet scan -> shuffle buffer -> hashing -> batch dicts
    in-memory  the same batches, encoded beforehand and held as tensors

ratio = pipeline samples/s / in-memory samples/s: near 1.0 means input is not the bottleneck.
Also prints the pipeline alone (decode only, no training), and on the in-memory batches:

    plain loop   the same UpstreamSystem's loss and AdamW in a plain PyTorch loop, no
                 Lightning (issue 15: Lightning within 10 % of it)
    compiled     Lightning with the network wrapped in `torch.compile` (default mode); the
                 compile time is reported apart and kept out of the steady-state samples/s

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


def fit_throughput(
    schema, model_cfg, loader_or_data, steps: int, warmup: int, seed: int, compile: bool = False
) -> float:
    """Samples/s of `steps` training steps (the first `warmup` not timed); `compile` wraps the
    network in torch.compile first (its compile happens in the untimed steps)."""
    import lightning as L
    import torch

    from trainers.upstream.system import UpstreamSystem

    L.seed_everything(seed, verbose=False)
    system = UpstreamSystem(schema, model_cfg, "ctr")
    if compile:
        system.model = torch.compile(system.model)
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


def plain_loop_throughput(schema, model_cfg, batches, warmup: int, seed: int) -> float:
    """Samples/s of a plain PyTorch loop (forward, the system's loss, backward, AdamW step)
    over `batches`, the first `warmup` not timed: the floor Lightning's loop is held to."""
    import lightning as L

    from trainers.upstream.system import UpstreamSystem

    L.seed_everything(seed, verbose=False)
    system = UpstreamSystem(schema, model_cfg, "ctr")
    system.train()
    optimizer = system.configure_optimizers()
    rows, started = 0, None
    for step, batch in enumerate(batches):
        if step == warmup:
            started = time.perf_counter()
        loss = system.loss(batch, step)[0]
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if step >= warmup:
            rows += batch["labels"].shape[0]
    return rows / (time.perf_counter() - started)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--logs", type=Path, help="a log to read (default: generate 2 demo days)")
    parser.add_argument("--steps", type=int, default=40, help="training steps per run")
    parser.add_argument("--warmup", type=int, default=5, help="untimed first steps")
    parser.add_argument("--batch-size", type=int, default=1024)
    parser.add_argument("--threads", type=int, help="torch threads (default: torch's)")
    parser.add_argument("--accelerator", default="auto")
    parser.add_argument(
        "--no-compile", action="store_true", help="skip the torch.compile run (it compiles ~1 min)"
    )
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

    plain = plain_loop_throughput(log.schema, cfg, batches, args.warmup, seed=0)
    compiled = compile_s = None
    if not args.no_compile:
        started = time.perf_counter()
        compiled = fit_throughput(
            log.schema, cfg, DataLoader(batches, batch_size=None), args.steps, args.warmup,
            seed=0, compile=True,
        )  # fmt: skip
        compile_s = (
            time.perf_counter() - started - (args.steps - args.warmup) * args.batch_size / compiled
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
    verdict = "met" if in_memory >= 0.9 * plain else "not met"
    print(f"train, plain PyTorch loop (floor):   {plain:10.0f} samples/s")
    print(f"ratio Lightning / plain loop:        {in_memory / plain:10.3f}  "
          f"(target >= 0.90: {verdict})")  # fmt: skip
    if compiled is not None:
        print(f"train, torch.compile (Lightning):    {compiled:10.0f} samples/s "
              f"(~{compile_s:.0f} s to compile, in the untimed steps)")  # fmt: skip
        print(f"ratio compiled / eager:              {compiled / in_memory:10.3f}")
    if tmp is not None:
        tmp.cleanup()


if __name__ == "__main__":
    main()
