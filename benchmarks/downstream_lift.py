"""Does DERM lift the downstream models? Baselines, intervals and upstream step policies.

    .venv/bin/python -m benchmarks.downstream_lift --out /tmp/lift [--min-steps 100 ...]

(`-m` from the repository root.) On the demo's generated log (14 days x 30k impressions,
20k users, 5k Pins; or `--logs` for any log that follows the contract):

1. `derm backfill` with the demo's upstream model and the given step policy (`--epochs`,
   `--min-steps`, `--max-epochs`, `--replay-days`, `--batch-size`): window fit on the
   first 7 days, then each day's incremental fit, inference and materialization.
2. For each task and downstream seed, `compare_downstream`: the prior, the per-Pin rate,
   logistic regressions without and with DERM, and the downstream model without and with
   the four DERM embeddings, on the same eval rows (the last two days), with 95 % bootstrap
   intervals and the paired lift.
3. Prints per seed the lift of the model with DERM over the model without, with its paired
   interval, then the mean and spread over seeds, and writes everything to
   OUT/lift-<policy>.json and .md.

The backfill is resumable: a second run with the same --out and policy reuses it.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import statistics
import time
from pathlib import Path

ALL = ("ctr_user", "ctr_pin", "cvr_user", "cvr_pin")
START = dt.date(2026, 1, 1)


def policy_name(args) -> str:
    return (
        f"e{args.epochs}-s{args.min_steps}-m{args.max_epochs}-r{args.replay_days}"
        f"-b{args.batch_size}"
    )


def backfill(args, workdir, logs: Path, days: int) -> float:
    from derm_features.jobs.demo import DEMO_MODEL
    from derm_features.jobs.pipeline import PipelineConfig
    from derm_features.jobs.pipeline import backfill as run_backfill

    train = {
        "epochs": args.epochs,
        "min_steps": args.min_steps,
        "max_epochs": args.max_epochs,
        "replay_days": args.replay_days,
        "batch_size": args.batch_size,
        "threads": args.threads,
    }
    cfg = PipelineConfig(
        logs=logs, workdir=workdir, window_days=7, model=DEMO_MODEL, train=train,
        online=False, index=False, progress=False,
    )  # fmt: skip
    t0 = time.perf_counter()
    run_backfill(cfg, START, START + dt.timedelta(days=days - 1))
    return time.perf_counter() - t0


def upstream_quality(workdir, days: int) -> dict:
    """Each model's held-out ROC-AUC of its own label, mean over the incremental days."""
    from derm_features.jobs.pipeline import read_marker

    out = {}
    for model in ("ctr", "cvr"):
        aucs = []
        for i in range(7, days - 1):
            m = read_marker(workdir, model, "train", START + dt.timedelta(days=i)) or {}
            if m.get("roc_auc") is not None:
                aucs.append(m["roc_auc"])
        out[model] = statistics.fmean(aucs) if aucs else None
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, required=True, help="Work area (reused).")
    parser.add_argument("--logs", type=Path, help="A log to use instead of generating one.")
    parser.add_argument("--days", type=int, default=14)
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--min-steps", type=int, default=30)
    parser.add_argument("--max-epochs", type=int, default=10)
    parser.add_argument("--replay-days", type=int, default=0)
    parser.add_argument("--batch-size", type=int, default=1024)
    parser.add_argument("--seeds", type=int, default=3, help="Downstream seeds.")
    parser.add_argument("--tasks", default="ctr,cvr")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument(
        "--sweep",
        action="store_true",
        help="Instead of the comparison: downstream dropout x weight decay on the ctr task "
        "(validation and eval log loss, eval ROC-AUC; without and with DERM; --seeds seeds).",
    )
    parser.add_argument("--sweep-only", default="", help="dropout:wd:lr,... instead of SWEEP")
    args = parser.parse_args(argv)

    from derm_features.core.workdir import Workdir
    from derm_features.feast.repo import apply
    from derm_features.synthetic import GenerateConfig, generate_logs
    from trainers.downstream.evaluation import markdown
    from trainers.downstream.job import (
        NO_DERM,
        WITH_DERM,
        DownstreamConfig,
        compare_downstream,
        task_defaults,
    )
    from trainers.downstream.training_set import TrainingSetConfig, build_training_set

    logs = args.logs
    if logs is None:
        logs = args.out / "log" / "logs"
        if not logs.is_dir():
            generate_logs(
                GenerateConfig(out=args.out / "log", users=20_000, pins=5_000, days=args.days,
                               start=START, seed=0, impressions_per_day=30_000, progress=False)
            )  # fmt: skip
    name = policy_name(args)
    workdir = Workdir(args.out / name)
    workdir.root.mkdir(parents=True, exist_ok=True)
    apply(workdir, quiet=True)
    seconds = backfill(args, workdir, logs, args.days)
    upstream = upstream_quality(workdir, args.days)
    print(f"policy {name}: backfill {seconds:.0f} s; upstream held-out ROC-AUC {upstream}")

    end = START + dt.timedelta(days=args.days - 1)
    train_start, train_end = START + dt.timedelta(days=7), end - dt.timedelta(days=2)
    eval_start = end - dt.timedelta(days=1)
    sets = [
        build_training_set(TrainingSetConfig(logs, workdir.root, a, b, ALL))
        for a, b in ((train_start, train_end), (eval_start, end))
    ]
    if args.sweep:
        sweep(args, logs, workdir, sets, (train_start, train_end, eval_start, end))
        return
    results = {"policy": name, "backfill_s": seconds, "upstream_roc_auc": upstream, "tasks": {}}
    tables = []
    for task in args.tasks.split(","):
        epochs, batch = task_defaults(task)
        per_seed = []
        for seed in range(args.seeds):
            cfg = DownstreamConfig(
                task=task, logs=logs, workdir=workdir.root, train_start=train_start,
                train_end=train_end, eval_start=eval_start, eval_end=end, embeddings=ALL,
                seed=seed, epochs=epochs, batch_size=batch,
            )  # fmt: skip
            result = compare_downstream(cfg, *sets, progress=False)
            per_seed.append(result)
            tables.append(markdown(result, f"{task}, seed {seed}, upstream policy {name}"))
            m = result["models"]
            d = m[WITH_DERM]
            print(
                f"{task} seed {seed}: no-DERM {m[NO_DERM]['roc_auc']:.4f}, DERM "
                f"{d['roc_auc']:.4f}, lift {d['roc_auc_lift_pct']:+.2f} % "
                f"[{d['roc_auc_lift_ci'][0]:+.2f}, {d['roc_auc_lift_ci'][1]:+.2f}]; "
                f"LR {m['logistic regression']['roc_auc']:.4f}; log loss {d['logloss']:.4f} "
                f"(best constant {result['best_constant_logloss']:.4f}); positives "
                f"{result['eval_positives']}",
                flush=True,
            )
        lifts = [r["models"][WITH_DERM]["roc_auc_lift_pct"] for r in per_seed]
        summary = {
            "roc_auc_lift_mean": statistics.fmean(lifts),
            "roc_auc_lift_std": statistics.stdev(lifts) if len(lifts) > 1 else 0.0,
            "seeds": per_seed,
        }
        results["tasks"][task] = summary
        print(f"{task}: ROC-AUC lift over seeds {summary['roc_auc_lift_mean']:+.2f} ± "
              f"{summary['roc_auc_lift_std']:.2f} %")  # fmt: skip
    (args.out / f"lift-{name}.json").write_text(json.dumps(results, indent=1, default=float))
    (args.out / f"lift-{name}.md").write_text("\n".join(tables))


# (dropout, weight decay, learning rate); the first is the old default, the second today's
SWEEP = (
    (0.0, 1e-5, 2e-3), (0.1, 1e-4, 2e-3), (0.3, 1e-4, 2e-3), (0.1, 1e-3, 2e-3),
    (0.3, 1e-2, 2e-3), (0.1, 1e-4, 1e-3), (0.1, 1e-4, 5e-4),
)  # fmt: skip


def sweep(args, logs, workdir, sets, days) -> None:
    """Dropout x weight decay of the ctr model, encoded once; one line per setting."""
    from dataclasses import replace

    from trainers.downstream.evaluation import point_metrics
    from trainers.downstream.job import DownstreamConfig, encode, fit, predict
    from trainers.downstream.models import NetworkConfig

    train_start, train_end, eval_start, end = days
    base = DownstreamConfig(
        task="ctr", logs=logs, workdir=workdir.root, train_start=train_start,
        train_end=train_end, eval_start=eval_start, eval_end=end, embeddings=ALL,
    )  # fmt: skip
    enc = encode(base, *sets)
    only = [tuple(float(x) for x in v.split(":")) for v in args.sweep_only.split(",") if v]
    for dropout, wd, lr in only or SWEEP:
        for keys in ((), ALL):
            vals, evals = [], []
            for seed in range(args.seeds):
                cfg = replace(base, seed=seed, weight_decay=wd, lr=lr,
                              network=NetworkConfig(dropout=dropout))  # fmt: skip
                system, info = fit(cfg, enc, keys, progress=False)
                labels, probs = predict(cfg, system, enc, keys)
                vals.append(info["val_logloss"])
                evals.append({**point_metrics(labels, probs), "epoch": info["best_epoch"]})
            print(
                f"dropout {dropout} wd {wd:g} lr {lr:g} {'DERM' if keys else 'none'}: val logloss "
                f"{statistics.fmean(vals):.5f}; eval logloss "
                f"{statistics.fmean(e['logloss'] for e in evals):.5f}, ROC-AUC "
                f"{statistics.fmean(e['roc_auc'] for e in evals):.4f} ± "
                f"{statistics.pstdev(e['roc_auc'] for e in evals):.4f}; best epochs "
                f"{[e['epoch'] for e in evals]}",
                flush=True,
            )


if __name__ == "__main__":
    main()
