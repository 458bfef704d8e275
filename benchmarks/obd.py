"""derm end to end on a real log: the Open Bandit Dataset sample (all 60,000 impressions).

    pip download obp==0.4.1 --no-deps -d /tmp/obp        # the wheel holds the sample
    .venv/bin/python -m benchmarks.obd --wheel /tmp/obp/obp-0.4.1-py3-none-any.whl --threads 1

(`-m` from the repository root: run as a file, benchmarks/materialize.py would shadow
the `materialize` package.) Every step is the `derm` command a user would type, run in a
child process and timed:

1. `derm convert-obd` the wheel (not installed) into OUT/logs; `derm validate-logs`.
2. `derm apply`, then `derm backfill` from the first day: a window fit on --window-days
   days, then daily steps up to the day before the last (the last eval day's events see
   the pool of the day before). ctr only trains: OBD has no conversions, so cvr skips
   itself (its message is printed).
3. `derm downstream --task ctr`, trained on the days between the window and the eval
   days, evaluated on the last --eval-days days, without and with the ctr DERM
   embeddings (user and Pin).
4. Prints each run's JSON line as a table (whatever keys it has: ROC-AUC, PR-AUC, log
   loss, eval rows; a nested comparison of methods, such as baselines with intervals,
   becomes a table of its own, one row per method), the eval positives, the
   best constant's log loss (the training days' click rate, on the eval rows, computed
   here from the log) and an approximate ROC-AUC standard error (Hanley & McNeil 1982),
   so a lift can be read against its noise. Writes everything to OUT/obd_benchmark.json.

The split: the sample has 287 clicks over 7 days (35-47 a day), so a single eval day has
about 43 positives (ROC-AUC standard error ~0.04). The default takes the last 3 days for
eval (125 clicks), 2 for the window fit and the 2 between for downstream training; the
eval days come after every training day, so nothing is evaluated on data it trained on.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import math
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as pads
import yaml

from derm_features.demo import DEMO_MODEL

HEADLINE = ("roc_auc", "pr_auc", "logloss", "eval_rows", "eval_positives", "train_rows")
FEW_POSITIVES = 200  # below this an AUC difference of a few points is within noise


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--wheel", type=Path, required=True, help="The obp-0.4.1 wheel file.")
    parser.add_argument(
        "--out", type=Path, default=None, help="Work directory (default: a new one under /tmp)."
    )
    parser.add_argument("--window-days", type=int, default=2, help="Days of the window fit.")
    parser.add_argument("--eval-days", type=int, default=3, help="Last days held out for eval.")
    parser.add_argument("--threads", type=int, default=1, help="torch threads for training.")
    parser.add_argument("--seed", type=int, default=0, help="Seed of the downstream runs.")
    parser.add_argument(
        "--model",
        choices=("demo", "default"),
        default="demo",
        help="Upstream model shape: derm demo's small one, or ModelConfig's default.",
    )
    parser.add_argument(
        "--upstream-epochs",
        type=int,
        default=None,
        help="train.epochs of the upstream fits (default: derm's).",
    )
    parser.add_argument(
        "--online",
        action="store_true",
        help="Also push each day to Redis (--redis-url); off by default: the numbers come "
        "from the offline store.",
    )
    parser.add_argument(
        "--redis-url", default="redis://127.0.0.1:6379/12", help="Redis for feast apply/push."
    )
    return parser.parse_args()


# ----------------------------------------------------------------------------- running derm


def derm(args: list[str], env: dict[str, str]) -> tuple[str, float]:
    """Runs `derm ARGS` in a child process; returns (stdout, seconds). Exits on failure."""
    started = time.perf_counter()
    # the repository's own derm, whichever interpreter runs this benchmark
    cmd = [sys.executable, "-c", "from derm_features.cli import main; main()", *args]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
    seconds = time.perf_counter() - started
    if proc.returncode != 0:
        sys.exit(f"derm {' '.join(args)} failed ({proc.returncode}):\n{proc.stderr[-4000:]}")
    return proc.stdout, seconds


def last_json(stdout: str) -> dict:
    return json.loads(stdout.strip().splitlines()[-1])


def child_env(redis_url: str) -> dict[str, str]:
    """This process's environment plus REDIS_URL and the repository on PYTHONPATH."""
    root = str(Path(__file__).resolve().parent.parent)
    path = os.environ.get("PYTHONPATH")
    return {
        **os.environ,
        "REDIS_URL": redis_url,
        "PYTHONPATH": root if not path else f"{root}{os.pathsep}{path}",
    }


# ----------------------------------------------------------------------------- numbers


def day_labels(logs: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(day as numpy datetime64[D], click 0/1, pin_id) of every row of the log."""
    partitioning = pads.partitioning(pa.schema([("ds", pa.string())]), flavor="hive")
    table = pads.dataset(logs, partitioning=partitioning).to_table(
        columns=["ts", "click", "pin_id"]
    )
    days = pc.cast(pc.cast(table.column("ts"), pa.timestamp("us")), pa.date32())
    return (
        days.to_numpy().astype("datetime64[D]"),
        table.column("click").to_numpy(),
        table.column("pin_id").to_numpy(zero_copy_only=False),
    )


def roc_auc(y: np.ndarray, score: np.ndarray) -> float:
    """ROC-AUC as the Mann-Whitney statistic, ties counted half (average ranks)."""
    _, inverse, counts = np.unique(score, return_inverse=True, return_counts=True)
    ends = np.cumsum(counts)
    ranks = ((ends - counts + 1 + ends) / 2.0)[inverse]
    pos = int(y.sum())
    neg = y.size - pos
    return float((ranks[y == 1].sum() - pos * (pos + 1) / 2) / (pos * neg))


def per_pin_rate_auc(days, clicks, pins, evals: list[dt.date], strength: float = 20.0) -> float:
    """ROC-AUC on the eval rows of each Pin's click rate over every day before them.

    Smoothed towards the overall rate with `strength` pseudo-impressions (a Pin never
    seen gets the overall rate): the "is there any signal at all" reference.
    """
    before = days < np.datetime64(evals[0], "D")
    in_eval = np.isin(days, np.array(evals, dtype="datetime64[D]"))
    prior = clicks[before].mean()
    keys, inverse = np.unique(pins, return_inverse=True)
    shown = np.bincount(inverse[before], minlength=keys.size)
    clicked = np.bincount(inverse[before], weights=clicks[before], minlength=keys.size)
    rate = (clicked + strength * prior) / (shown + strength)
    return roc_auc(clicks[in_eval], rate[inverse[in_eval]])


def constant_logloss(days, clicks, train: list[dt.date], evals: list[dt.date]) -> dict:
    """The best constant: the training days' click rate, scored on the eval rows."""
    in_train = np.isin(days, np.array(train, dtype="datetime64[D]"))
    in_eval = np.isin(days, np.array(evals, dtype="datetime64[D]"))
    prior = float(clicks[in_train].mean())
    y = clicks[in_eval]
    loss = float(-np.mean(y * np.log(prior) + (1 - y) * np.log(1 - prior)))
    return {"prior": prior, "logloss": loss, "eval_rows": int(y.size), "positives": int(y.sum())}


def auc_standard_error(auc: float, positives: int, negatives: int) -> float:
    """Hanley & McNeil (1982) standard error of a ROC-AUC from its class counts."""
    q1, q2 = auc / (2 - auc), 2 * auc * auc / (1 + auc)
    var = (
        auc * (1 - auc) + (positives - 1) * (q1 - auc * auc) + (negatives - 1) * (q2 - auc * auc)
    ) / (positives * negatives)
    return math.sqrt(max(var, 0.0))


def flatten(d: dict, prefix: str = "") -> dict:
    """Nested dicts as dotted keys ({"a": {"b": 1}} -> {"a.b": 1}); lists kept whole."""
    out = {}
    for key, value in d.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            out.update(flatten(value, f"{name}."))
        else:
            out[name] = value
    return out


def fmt(value) -> str:
    if isinstance(value, list | tuple):  # an interval, e.g. a bootstrap 95 % one
        return "[" + ", ".join(fmt(v) for v in value) + "]"
    if isinstance(value, float):
        return f"{value:.4f}" if abs(value) < 1e4 else f"{value:,.0f}"
    if isinstance(value, int) and not isinstance(value, bool):
        return f"{value:,}"
    return str(value)


def is_table(value) -> bool:
    """A dict of dicts, e.g. {"prior": {"roc_auc": ...}, "pin rate": {...}}: rows x metrics."""
    return (
        isinstance(value, dict) and bool(value) and all(isinstance(v, dict) for v in value.values())
    )


def metric_order(key: str) -> tuple:
    """Headline metrics first (roc_auc, pr_auc, logloss, ...), each followed by its variants."""
    for i, head in enumerate(HEADLINE):
        if key == head or key.startswith(f"{head}_"):
            return (i, key != head, key)
    return (len(HEADLINE), False, key)


def text_table(rows: dict[str, dict], columns: list[str] | None = None, first: str = "") -> str:
    """Rows (name -> {column: value}) as aligned text; columns in metric order unless given."""
    if columns is None:
        columns = sorted({c for r in rows.values() for c in r}, key=metric_order)
    cells = {n: [fmt(r.get(c, "-")) for c in columns] for n, r in rows.items()}
    widths = [max([len(c)] + [len(v[i]) for v in cells.values()]) for i, c in enumerate(columns)]
    name_width = max([len(first)] + [len(n) for n in rows])

    def line(name: str, values: list[str]) -> str:
        padded = (f"{v:>{w}}" for v, w in zip(values, widths, strict=True))
        return f"{name:{name_width}}  " + "  ".join(padded)

    return "\n".join([line(first, columns)] + [line(n, v) for n, v in cells.items()])


def results_table(runs: dict[str, dict]) -> str:
    """The runs' JSON lines, readable, whatever keys they carry.

    Scalars (and nested dicts, flattened): one column per run. A dict of dicts (such as a
    comparison of methods on the same eval rows) becomes a table of its own, one row per
    entry; an entry that is the same in several runs is shown once.
    """
    scalars = {name: {} for name in runs}
    tables: dict[str, dict[str, dict]] = {}
    for name, metrics in runs.items():
        for key, value in metrics.items():
            if is_table(value):
                rows = tables.setdefault(key, {})
                for row, row_metrics in value.items():
                    flat = flatten(row_metrics)
                    if rows.get(row, flat) != flat:  # differs between runs: say whose
                        row = f"{row} ({name})"
                    rows[row] = flat
            elif isinstance(value, dict):
                scalars[name].update(flatten(value, f"{key}."))
            else:
                scalars[name][key] = value
    # scalars: one row per key, one column per run (runs side by side read best)
    keys = sorted({k for m in scalars.values() for k in m}, key=metric_order)
    by_key = {k: {name: m.get(k, "-") for name, m in scalars.items()} for k in keys}
    parts = [text_table(by_key, columns=list(runs))]
    parts += [text_table(rows, first=key) for key, rows in tables.items()]
    return "\n\n".join(parts)


# ----------------------------------------------------------------------------- the run


def main() -> None:
    args = parse_args()
    out = args.out or Path(tempfile.mkdtemp(prefix="derm-bench-obd-"))
    logs = out / "logs"
    env = child_env(args.redis_url)
    timings: dict[str, float] = {}
    wd = ["--workdir", str(out)]

    stdout, timings["convert"] = derm(
        ["convert-obd", str(args.wheel), "--out", str(logs), "--overwrite"], env
    )
    summary = last_json(stdout)
    _, timings["validate"] = derm(["validate-logs", str(logs)], env)
    days = [dt.date.fromisoformat(d) for d in sorted(summary["days"])]
    print(
        f"converted {summary['rows']:,} impressions, {summary['clicks']} clicks, "
        f"{summary['users']} pseudo-users, {summary['pins']} Pins, {len(days)} days "
        f"({days[0]}..{days[-1]}) in {timings['convert']:.1f} s",
        flush=True,
    )
    if len(days) < args.window_days + args.eval_days + 1:
        sys.exit(f"{len(days)} days cannot hold the window, a training day and the eval days")
    window = days[: args.window_days]
    train = days[args.window_days : len(days) - args.eval_days]
    evals = days[len(days) - args.eval_days :]
    print(
        f"split: window {window[0]}..{window[-1]}, downstream train {train[0]}..{train[-1]}, "
        f"eval {evals[0]}..{evals[-1]}",
        flush=True,
    )

    config = {"train": {"threads": args.threads}}
    if args.model == "demo":
        config["model"] = DEMO_MODEL
    if args.upstream_epochs:
        config["train"]["epochs"] = args.upstream_epochs
    (out / "derm.yaml").write_text(yaml.safe_dump(config))

    _, timings["apply"] = derm(["apply", *wd], env)
    stdout, timings["backfill"] = derm(
        # up to the day before the last: its pool is what the last eval day's events see
        ["backfill", "--logs", str(logs), "--start", str(days[0]), "--end", str(days[-2])]
        + ["--window-days", str(args.window_days), "--config", str(out / "derm.yaml")]
        + ["--threads", str(args.threads), "--online" if args.online else "--no-online", *wd],
        env,
    )
    backfill = last_json(stdout)
    for day, models in backfill.items():
        print(f"  backfill {day}: " + json.dumps(models), flush=True)
    print(f"backfill: {timings['backfill']:.1f} s", flush=True)

    runs: dict[str, dict] = {}
    for name, embeddings in (("without DERM", "none"), ("with DERM", "ctr_user,ctr_pin")):
        stdout, timings[f"downstream {name}"] = derm(
            ["downstream", "--task", "ctr", "--logs", str(logs), *wd]
            + ["--train-start", str(train[0]), "--train-end", str(train[-1])]
            + ["--eval-start", str(evals[0]), "--eval-end", str(evals[-1])]
            + ["--embeddings", embeddings, "--seed", str(args.seed)],
            env,
        )
        runs[name] = last_json(stdout)

    label_days, clicks, pins = day_labels(logs)
    constant = constant_logloss(label_days, clicks, train, evals)
    constant["per_pin_rate_roc_auc"] = per_pin_rate_auc(label_days, clicks, pins, evals)
    pos, neg = constant["positives"], constant["eval_rows"] - constant["positives"]
    for name, metrics in runs.items():
        # counted here from the log; a run that reports its own must agree
        if (
            metrics.setdefault("eval_positives", pos) != pos
            or metrics["eval_rows"] != (constant["eval_rows"])
        ):
            print(f"warning: {name}'s eval rows/positives differ from the log's eval days")
        metrics["logloss_vs_best_constant"] = metrics["logloss"] / constant["logloss"]
        metrics["roc_auc_se_hanley_mcneil"] = auc_standard_error(metrics["roc_auc"], pos, neg)

    print()
    print(
        f"EVAL POSITIVES: {pos} clicks in {constant['eval_rows']:,} eval impressions "
        f"({evals[0]}..{evals[-1]})"
    )
    if pos < FEW_POSITIVES:
        print(
            f"  warning: fewer than {FEW_POSITIVES} eval positives; ROC-AUC differences "
            "smaller than ~2 standard errors are noise"
        )
    print(
        f"best constant (training-day click rate {constant['prior']:.5f}): "
        f"eval log loss {constant['logloss']:.5f}"
    )
    print(
        "per-Pin click rate of the days before eval (smoothed), no model: "
        f"ROC-AUC {constant['per_pin_rate_roc_auc']:.4f}"
    )
    print()
    print(results_table(runs))
    total = sum(timings.values())
    print()
    print(
        "runtime: "
        + ", ".join(f"{k} {v:.1f} s" for k, v in timings.items())
        + f"; total {total:.1f} s (threads {args.threads})"
    )
    report = {
        "args": {k: str(v) for k, v in vars(args).items()},
        "summary": summary,
        "split": {
            "window": [str(d) for d in window],
            "train": [str(d) for d in train],
            "eval": [str(d) for d in evals],
        },
        "best_constant": constant,
        "runs": runs,
        "seconds": timings,
    }
    (out / "obd_benchmark.json").write_text(json.dumps(report, indent=1, default=str))
    print(f"wrote {out / 'obd_benchmark.json'}")


if __name__ == "__main__":
    main()
