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
3. `derm downstream --task ctr --embeddings ctr_user,ctr_pin`, trained on the days between
   the window and the eval days, evaluated on the last --eval-days days: it scores the
   prior, the per-Pin rate, logistic regressions and the model without and with the ctr
   DERM embeddings on the same eval rows, with 95 % bootstrap intervals and the paired lift
   (trainers/downstream/evaluation.py), and this prints its table.
4. The eval positives, each model's log loss against the best constant's, the run times;
   everything to OUT/obd_benchmark.json.

The split: the sample has 287 clicks over 7 days (35-47 a day), so a single eval day has
about 43 positives (ROC-AUC standard error ~0.04). The default takes the last 3 days for
eval (125 clicks), 2 for the window fit and the 2 between for downstream training; the
eval days come after every training day, so nothing is evaluated on data it trained on.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

from derm_features.jobs.demo import DEMO_MODEL


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

    stdout, timings["downstream"] = derm(
        ["downstream", "--task", "ctr", "--logs", str(logs), *wd]
        + ["--train-start", str(train[0]), "--train-end", str(train[-1])]
        + ["--eval-start", str(evals[0]), "--eval-end", str(evals[-1])]
        + ["--embeddings", "ctr_user,ctr_pin", "--seed", str(args.seed)],
        env,
    )
    result = last_json(stdout)
    best = result["best_constant_logloss"]
    print()
    print(
        f"EVAL POSITIVES: {result['eval_positives']} clicks in {result['eval_rows']:,} eval "
        f"impressions ({evals[0]}..{evals[-1]})"
    )
    if result["warning"]:
        print(f"  warning: {result['warning']}")
    print("\n".join(line for line in stdout.splitlines() if line.startswith("|")))
    print(f"log loss / best constant's ({best:.5f}):")
    for name, row in result["comparison"].items():
        print(f"  {name:28s} {row['logloss'] / best:.3f}x")
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
        "downstream": result,
        "seconds": timings,
    }
    (out / "obd_benchmark.json").write_text(json.dumps(report, indent=1, default=str))
    print(f"wrote {out / 'obd_benchmark.json'}")


if __name__ == "__main__":
    main()
