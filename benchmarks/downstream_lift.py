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
   OUT/lift-<policy>[-f<fraction>].json and .md.

`--sample-fraction F` trains the downstream models and the baselines on a seeded share F
of the training days' rows (eval rows unchanged) while the upstream models keep the whole
log: the paper's setting, where upstream learns from far more data than each downstream
model (paper 1, 3, 4.1).

`--window-days W` (default 7) makes the upstream window fit W days long and the downstream
train on the days after it (`--days` long in all): the paper's "extended time window" of
the initial fit (appendix B.2), longer than any downstream model's training days.
`--upstream-seed S` seeds the upstream fits (own backfill folder per seed): the lift's spread
over upstream fits, beside the downstream seeds' spread.
`--oracle NOISE` replaces the trained embeddings by the generator's true vectors plus noise
(`oracle_set`): the lift a perfect upstream model would give, the ceiling of the others.
The upstream figures printed are each model's held-out ROC-AUC and its `tower_roc_auc`
(u.p alone), means over the incremental days.

`--sweep` trains one task (`--sweep-task`) under each of several settings instead
(`--sweep-only 'dense_l2=1e-4;wide=1,wide_l2=5.6e-5'`, keys in SETTINGS, among them the
embedding L2 `emb_l2` and the sample `fraction`) and prints per seed the validation log
loss (what a setting is chosen by), eval log loss and ROC-AUC without and with DERM,
DERM's paired lift and the tuned logistic regression's paired lead, then means and spreads;
one JSON line per setting goes to OUT/sweep-<task>.jsonl.

The backfill is resumable: a second run with the same --out and policy reuses it, and each
task's encoded sets are cached in the policy folder (encoded-<task>.pt).
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
    window = "" if args.window_days == 7 else f"w{args.window_days}-"
    seed = f"-u{args.upstream_seed}" if args.upstream_seed else ""
    return window + (
        f"e{args.epochs}-s{args.min_steps}-m{args.max_epochs}-r{args.replay_days}"
        f"-b{args.batch_size}{seed}"
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
        logs=logs, workdir=workdir, window_days=args.window_days, model=DEMO_MODEL, train=train,
        online=False, index=False, progress=False, seed=args.upstream_seed,
    )  # fmt: skip
    t0 = time.perf_counter()
    run_backfill(cfg, START, START + dt.timedelta(days=days - 1))
    return time.perf_counter() - t0


def upstream_quality(workdir, days: int, window_days: int = 7) -> dict:
    """Each model's held-out ROC-AUC of its own label, mean over the incremental days."""
    from derm_features.jobs.pipeline import read_marker

    out = {}
    for model in ("ctr", "cvr"):
        for metric in ("roc_auc", "tower_roc_auc"):
            values = []
            for i in range(window_days, days - 1):
                m = read_marker(workdir, model, "train", START + dt.timedelta(days=i)) or {}
                if m.get(metric) is not None:
                    values.append(m[metric])
            key = model if metric == "roc_auc" else f"{model}_tower"
            out[key] = round(statistics.fmean(values), 4) if values else None
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, required=True, help="Work area (reused).")
    parser.add_argument("--logs", type=Path, help="A log to use instead of generating one.")
    parser.add_argument("--days", type=int, default=14)
    parser.add_argument(
        "--window-days",
        type=int,
        default=7,
        help="Days of the upstream window fit; the downstream models train on the days after "
        "it (all but the last two, the last of them validating) and are scored on the last two.",
    )
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--min-steps", type=int, default=30)
    parser.add_argument("--max-epochs", type=int, default=10)
    parser.add_argument("--replay-days", type=int, default=0)
    parser.add_argument("--batch-size", type=int, default=1024)
    parser.add_argument("--seeds", type=int, default=3, help="Downstream seeds.")
    parser.add_argument(
        "--upstream-seed",
        type=int,
        default=0,
        help="Seed of the upstream fits (weights, shuffle, dropout); each seed has its own "
        "backfill folder, so several runs give the lift's spread over upstream fits.",
    )
    parser.add_argument("--tasks", default="ctr,cvr")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument(
        "--sample-fraction",
        type=float,
        default=1.0,
        help="Downstream sample fraction: the share of the training days' rows the downstream "
        "models and the baselines learn from, drawn per seed (eval rows unchanged; the upstream "
        "models keep the whole log).",
    )
    parser.add_argument(
        "--sweep",
        action="store_true",
        help="Instead of the comparison: a sweep of downstream settings on one task (SWEEP, or "
        "--sweep-only), over training sets encoded once; per seed the validation log loss, "
        "eval log loss and ROC-AUC without and with DERM, the paired lift and the tuned "
        "logistic regression beside them.",
    )
    parser.add_argument(
        "--oracle",
        type=float,
        default=None,
        metavar="NOISE",
        help="Replace the trained DERM embeddings by the generator's true vectors plus "
        "Gaussian noise of this relative size (0: exact): the lift a perfect upstream model "
        "would give. Generated logs only (reads truth/ beside the logs).",
    )
    parser.add_argument("--sweep-task", default="ctr", help="The task the sweep trains.")
    parser.add_argument(
        "--sweep-only",
        default="",
        help="Settings instead of SWEEP, separated by ';': each comma-separated key=value "
        f"with keys {', '.join(SETTINGS)} (e.g. 'dense_l2=1e-4;wide=1,wide_l2=1e-4'); the "
        "old 'dropout:wd:lr' form is read too; 'defaults' is a setting too. Unset keys keep the "
        "defaults.",
    )
    parser.add_argument(
        "--sweep-models",
        default="none,derm",
        help="Which of the model without DERM (none) and with it (derm) each setting trains.",
    )
    args = parser.parse_args(argv)

    from derm_features.core.workdir import Workdir
    from derm_features.feast.repo import apply
    from derm_features.synthetic import GenerateConfig, generate_logs
    from trainers.downstream.evaluation import markdown
    from trainers.downstream.job import NO_DERM, WITH_DERM, compare_downstream, task_defaults

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
    upstream = upstream_quality(workdir, args.days, args.window_days)
    print(f"policy {name}: backfill {seconds:.0f} s; upstream held-out ROC-AUC {upstream}")

    end = START + dt.timedelta(days=args.days - 1)
    # train days 8-12 (12 validates), eval 13-14 on the demo's 14 with a 7-day window
    first = START + dt.timedelta(days=args.window_days)
    days = (first, end - dt.timedelta(days=2), end - dt.timedelta(days=1), end)
    oracle = None
    if args.oracle is not None:
        oracle = (logs.parent / "truth", args.oracle)
        name += f"-oracle{args.oracle:g}"
    encoded = Encodings(logs, workdir, days, oracle)
    if args.sweep:
        sweep(args, encoded)
        return
    fraction = args.sample_fraction
    if fraction != 1:
        name += f"-f{fraction:g}"
    results = {"policy": name, "backfill_s": seconds, "upstream_roc_auc": upstream,
               "sample_fraction": fraction, "tasks": {}}  # fmt: skip
    tables = []
    for task in args.tasks.split(","):
        epochs, batch = task_defaults(task)
        per_seed = []
        for seed in range(args.seeds):
            cfg = encoded.config(task, seed=seed, epochs=epochs, batch_size=batch,
                                 sample_fraction=fraction)  # fmt: skip
            result = compare_downstream(cfg, progress=False, encoded=encoded.get(task))
            per_seed.append(result)
            tables.append(markdown(result, f"{task}, seed {seed}, upstream policy {name}"))
            m = result["models"]
            d = m[WITH_DERM]
            print(
                f"{task} seed {seed}: no-DERM {m[NO_DERM]['roc_auc']:.4f}, DERM "
                f"{d['roc_auc']:.4f}, lift {d['roc_auc_lift_pct']:+.2f} % "
                f"[{d['roc_auc_lift_ci'][0]:+.2f}, {d['roc_auc_lift_ci'][1]:+.2f}]; "
                f"LR {m['logistic regression']['roc_auc']:.4f}; log loss {d['logloss']:.4f} "
                f"(best constant {result['best_constant_logloss']:.4f}; difference "
                f"[{d['logloss_vs_constant_ci'][0]:+.4f}, {d['logloss_vs_constant_ci'][1]:+.4f}]"
                f", no DERM [{m[NO_DERM]['logloss_vs_constant_ci'][0]:+.4f}, "
                f"{m[NO_DERM]['logloss_vs_constant_ci'][1]:+.4f}]); positives "
                f"{result['eval_positives']}; train rows {result['runs'][NO_DERM]['train_rows']}",
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


class Encodings:
    """Each task's training and eval sets, built from Feast and encoded once (at sample
    fraction 1), cached in the policy folder as encoded-<task>.pt so that later runs of the
    same --out (sweeps, other fractions) skip the point-in-time joins and the encoding."""

    def __init__(self, logs: Path, workdir, days: tuple[dt.date, ...], oracle=None) -> None:
        self.logs, self.workdir, self.days, self.oracle = logs, workdir, days, oracle
        self._sets = None
        self._encoded: dict = {}

    def config(self, task: str, **kw):
        from trainers.downstream.job import DownstreamConfig

        train_start, train_end, eval_start, end = self.days
        return DownstreamConfig(
            task=task, logs=self.logs, workdir=self.workdir.root, train_start=train_start,
            train_end=train_end, eval_start=eval_start, eval_end=end, embeddings=ALL, **kw,
        )  # fmt: skip

    def get(self, task: str):
        import torch

        from trainers.downstream.job import encode
        from trainers.downstream.training_set import TrainingSetConfig, build_training_set

        if task in self._encoded:
            return self._encoded[task]
        cfg = self.config(task)
        # what the encoding depends on besides the backfill: the days and the input features
        key = repr((self.days, cfg.network.feature_config(("x",)), cfg.network.count_features,
                    self.oracle))  # fmt: skip
        suffix = "" if self.oracle is None else f"-oracle{self.oracle[1]:g}"
        path = self.workdir.root / f"encoded-{task}{suffix}.pt"
        if path.exists():
            saved = torch.load(path, weights_only=False)
            if saved["key"] == key:
                self._encoded[task] = saved["encoded"]
                return saved["encoded"]
        if self._sets is None:
            train_start, train_end, eval_start, end = self.days
            self._sets = [
                build_training_set(TrainingSetConfig(self.logs, self.workdir.root, a, b, ALL))
                for a, b in ((train_start, train_end), (eval_start, end))
            ]
            if self.oracle is not None:
                self._sets = [oracle_set(s, *self.oracle) for s in self._sets]
        enc = encode(cfg, *self._sets)
        torch.save({"key": key, "encoded": enc}, path)
        self._encoded[task] = enc
        return enc


def oracle_set(training_set, truth_dir: Path, noise: float):
    """A copy of `training_set` whose four DERM columns hold the generator's truth instead
    of the trained embeddings: the ceiling any upstream model could give (`--oracle`).

    For an event on day t the vectors are the world's as of day t - 1 (what a daily refresh
    could know): ctr_user . ctr_pin = click_affinity / click_scale and cvr_user . cvr_pin =
    conversion_affinity / conversion_scale (`derm_features.synthetic.config` formulas), the
    biases in two extra slots; N(0, noise^2 / d) is added to each latent coordinate (seeded),
    then zeros pad to the view's D. Every entity is present.
    """
    import dataclasses
    import shutil

    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq

    from derm_features.core.arrays import fixed_size_list
    from derm_features.core.files import parquet_files
    from derm_features.synthetic.config import WorldParams
    from derm_features.synthetic.world import interest_at
    from trainers.downstream.training_set import (
        embedding_column,
        open_training_set,
        presence_column,
    )

    meta = json.loads((truth_dir / "meta.json").read_text())
    p = WorldParams(**{k: tuple(v) if isinstance(v, list) else v
                       for k, v in meta["params"].items()
                       if k in {f.name for f in dataclasses.fields(WorldParams)}})  # fmt: skip
    start = dt.date.fromisoformat(meta["config"]["start"])
    users = pq.read_table(truth_dir / "users.parquet")
    pins = pq.read_table(truth_dir / "pins.parquet")

    def matrix(table, column):
        flat = table[column].combine_chunks().flatten().to_numpy()
        return flat.reshape(len(table), -1)

    u_a, u_b, intent = (matrix(users, c) for c in ("interest_a", "interest_b", "intent"))
    content, conv = matrix(pins, "content"), matrix(pins, "conversion_vector")
    s, r = p.conversion_shared, (1 - p.conversion_shared**2) ** 0.5
    out = training_set.path.with_name(training_set.path.name + f"-oracle{noise:g}")
    if out.exists():
        shutil.rmtree(out)
    rng = np.random.default_rng(0)
    for file in parquet_files(training_set.path):
        table = pq.read_table(file)
        day = table["ts"][0].as_py().date()
        t = (day - start).days - 1
        u = table["user_id"].to_numpy() - users["user_id"][0].as_py()
        q = table["pin_id"].to_numpy() - pins["pin_id"][0].as_py()
        interest = interest_at(u_a, u_b, users["drift_rate"].to_numpy(),
                               users["drift_phase"].to_numpy(), t)[u]  # fmt: skip
        n, d = interest.shape
        one, zero = np.ones((n, 1)), np.zeros((n, 1))
        ub, pb = users["user_bias"].to_numpy()[u][:, None], pins["pin_bias"].to_numpy()[q][:, None]
        cb = pins["conversion_bias"].to_numpy()[q][:, None]

        def noisy(x, d=d):
            return x + rng.normal(0, noise / d**0.5, x.shape)

        vectors = {
            "ctr_user": np.hstack([noisy(interest), ub / p.click_scale, one]),
            "ctr_pin": np.hstack([noisy(content[q]), one, pb / p.click_scale]),
            "cvr_user": np.hstack([noisy(s * interest + r * intent[u]), one, zero]),
            "cvr_pin": np.hstack(
                [noisy(s * content[q] + r * conv[q]), cb / p.conversion_scale, zero]
            ),  # fmt: skip
        }
        for key, v in vectors.items():
            dim = training_set.dim(key)
            padded = np.zeros((n, dim), np.float32)
            padded[:, : min(dim, v.shape[1])] = v[:, :dim]
            column = embedding_column(key)
            table = table.set_column(table.schema.get_field_index(column), column,
                                     fixed_size_list(padded))  # fmt: skip
            has = presence_column(key)
            ones = pa.array(np.ones(n), table.schema.field(has).type)
            table = table.set_column(table.schema.get_field_index(has), has, ones)
        target = out / file.relative_to(training_set.path)
        target.parent.mkdir(parents=True, exist_ok=True)
        pq.write_table(table, target)
    shutil.copy(training_set.path / "meta.json", out / "meta.json")
    return open_training_set(out)


# Settings a sweep may set: key -> (where, field); "network" fields go to NetworkConfig.
SETTINGS = {
    "dropout": ("network", "dropout"),
    "wide": ("network", "wide"),
    "wd": ("run", "weight_decay"),
    "lr": ("run", "lr"),
    "emb_l2": ("run", "embedding_l2"),
    "dense_l2": ("run", "dense_l2"),
    "wide_l2": ("run", "wide_l2"),
    "fraction": ("run", "sample_fraction"),
    "patience": ("run", "patience"),
    "batch": ("run", "batch_size"),
}
# (dropout, weight decay, learning rate); the first is the old default, the second today's
SWEEP = (
    (0.0, 1e-5, 2e-3), (0.1, 1e-4, 2e-3), (0.3, 1e-4, 2e-3), (0.1, 1e-3, 2e-3),
    (0.3, 1e-2, 2e-3), (0.1, 1e-4, 1e-3), (0.1, 1e-4, 5e-4),
)  # fmt: skip


def parse_settings(text: str) -> list[dict[str, float]]:
    """'k=v,k=v;defaults;k=v' (or the old 'dropout:wd:lr,...') -> one dict per setting."""
    if text and "=" not in text:
        return [dict(zip(("dropout", "wd", "lr"), map(float, v.split(":")), strict=True))
                for v in text.split(",") if v]  # fmt: skip
    out = []
    for part in filter(None, (p.strip() for p in text.split(";"))):
        if part == "defaults":  # the task's defaults as they are
            out.append({})
            continue
        setting = {}
        for item in part.split(","):
            key, _, value = item.partition("=")
            if key.strip() not in SETTINGS:
                raise SystemExit(f"--sweep-only: unknown key {key!r}; known: {list(SETTINGS)}")
            setting[key.strip()] = float(value)
        out.append(setting)
    return out


def configure(base, setting: dict[str, float]):
    """base DownstreamConfig with `setting` applied (`SETTINGS`)."""
    from dataclasses import replace

    run, network = {}, {}
    for key, value in setting.items():
        where, field = SETTINGS[key]
        if field in ("wide",):
            value = bool(value)
        elif field in ("patience", "batch_size"):
            value = int(value)
        (network if where == "network" else run)[field] = value
    return replace(base, network=replace(base.network, **network), **run)


def sweep(args, encoded: Encodings) -> None:
    """Downstream settings on one task over sets encoded once: per setting and seed, the
    validation log loss (what chooses), the eval log loss and ROC-AUC without and with
    DERM, DERM's paired lift and the no-DERM model's paired difference from the tuned
    logistic regression (on the same sampled rows); then the means and spreads over seeds.
    One JSON line per setting is appended to OUT/sweep-<task>.jsonl."""
    from trainers.downstream.evaluation import compare, point_metrics
    from trainers.downstream.job import fit, predict, sample, score_baselines, task_defaults

    task = args.sweep_task
    epochs, batch = task_defaults(task)
    enc = encoded.get(task)
    settings = parse_settings(args.sweep_only) or [
        dict(zip(("dropout", "wd", "lr"), v, strict=True)) for v in SWEEP
    ]
    models = [m for m in args.sweep_models.split(",") if m]
    lr_cache: dict = {}
    for setting in settings:
        label = ",".join(f"{k}={v:g}" for k, v in setting.items()) or "defaults"
        rows, seed_preds = [], {}
        for seed in range(args.seeds):
            cfg = configure(encoded.config(task, seed=seed, epochs=epochs, batch_size=batch,
                                           threads=args.threads), setting)  # fmt: skip
            part = sample(enc, cfg)
            # the regression depends on the rows only: once per drawn sample
            lr_key = (cfg.sample_fraction, seed if cfg.sample_fraction < 1 else 0)
            if lr_key not in lr_cache:
                lr_cache[lr_key] = score_baselines(cfg, part, [()])["logistic regression"]
            preds, row = {"LR": lr_cache[lr_key]}, {"seed": seed}
            for model in models:
                keys = ALL if model == "derm" else ()
                system, info = fit(cfg, part, keys, progress=False)
                labels, preds[model] = predict(cfg, system, part, keys)
                row[model] = {**point_metrics(labels, preds[model]),
                              "val_logloss": info["val_logloss"], "epoch": info["best_epoch"],
                              "train_rows": info["train_rows"]}  # fmt: skip
            ref = models[0]
            result = compare(labels, preds, reference=ref, resamples=1000, seed=seed)
            for model in models:
                row[model]["roc_auc_ci"] = result["models"][model]["roc_auc_ci"]
            for other in preds:
                if other != ref:
                    r = result["models"][other]
                    row[f"{other}_vs_{ref}"] = [r["roc_auc_lift_pct"], *r["roc_auc_lift_ci"]]
            row["LR"] = {"roc_auc": result["models"]["LR"]["roc_auc"],
                         "logloss": result["models"]["LR"]["logloss"]}  # fmt: skip
            row["best_constant_logloss"] = result["best_constant_logloss"]
            rows.append(row)
            seed_preds.update({(m, seed): p for m, p in preds.items()})
            print(f"[{label}] seed {seed}: " + _seed_line(row, models, ref), flush=True)
        pooled = seed_mean_intervals(labels, seed_preds, ref, args.seeds)
        print(f"[{label}] {task} over {len(rows)} seeds: " + _summary(rows, models) + "; "
              + "; ".join(f"{k} seed-mean {v[0]:+.2f} % [{v[1]:+.2f}, {v[2]:+.2f}]"
                          for k, v in pooled.items()), flush=True)  # fmt: skip
        with open(args.out / f"sweep-{task}.jsonl", "a") as f:
            f.write(json.dumps({"setting": setting, "policy": policy_name(args), "seeds": rows,
                                "seed_mean": pooled}, default=float) + "\n")  # fmt: skip


def seed_mean_intervals(labels, preds: dict, ref: str, seeds: int) -> dict[str, list[float]]:
    """ROC-AUC lift % over `ref` of each other model, averaged over seeds, with the 95 %
    paired-bootstrap interval of that seed mean (every seed scores the same eval rows, so one
    replicate weights the rows of every run alike, as `derm experiment` does).
    preds: (model, seed) -> [n] probabilities. Returns "<model> vs <ref>" -> [mean, lo, hi]."""
    import numpy as np

    from trainers.downstream.evaluation import bootstrap, interval, point_metrics

    reps = bootstrap(labels, {f"{m}/{s}": p for (m, s), p in preds.items()}, 1000)
    out = {}
    for model in sorted({m for m, _ in preds} - {ref}):
        point = [100.0 * (point_metrics(labels, preds[(model, s)])["roc_auc"]
                          / point_metrics(labels, preds[(ref, s)])["roc_auc"] - 1.0)
                 for s in range(seeds)]  # fmt: skip
        paired = np.mean([100.0 * (reps[f"{model}/{s}"]["roc_auc"] / reps[f"{ref}/{s}"]["roc_auc"]
                                   - 1.0) for s in range(seeds)], axis=0)  # fmt: skip
        out[f"{model} vs {ref}"] = [statistics.fmean(point), *interval(paired)]
    return out


def _seed_line(row: dict, models: list[str], ref: str) -> str:
    parts = [
        f"{m} val {row[m]['val_logloss']:.5f} eval {row[m]['logloss']:.5f} "
        f"AUC {row[m]['roc_auc']:.4f} (epoch {row[m]['epoch']}, {row[m]['train_rows']} rows)"
        for m in models
    ]
    parts += [f"{k.replace('_vs_', ' vs ')} {v[0]:+.2f} % [{v[1]:+.2f}, {v[2]:+.2f}]"
              for k, v in row.items() if "_vs_" in k]  # fmt: skip
    parts.append(f"LR AUC {row['LR']['roc_auc']:.4f} eval {row['LR']['logloss']:.5f}")
    parts.append(f"best constant eval {row['best_constant_logloss']:.5f}")
    return "; ".join(parts)


def _summary(rows: list[dict], models: list[str]) -> str:
    def ms(values) -> str:
        values = list(values)
        sd = statistics.stdev(values) if len(values) > 1 else 0.0
        return f"{statistics.fmean(values):.5g} ± {sd:.2g}"

    parts = [
        f"{m} val {ms(r[m]['val_logloss'] for r in rows)}, "
        f"eval {ms(r[m]['logloss'] for r in rows)}, AUC {ms(r[m]['roc_auc'] for r in rows)}"
        for m in models
    ]
    if "derm_vs_none" in rows[0]:
        parts.append(f"DERM lift {ms(r['derm_vs_none'][0] for r in rows)} %")
    parts.append(f"LR AUC {ms(r['LR']['roc_auc'] for r in rows)}")
    return "; ".join(parts)


if __name__ == "__main__":
    main()
