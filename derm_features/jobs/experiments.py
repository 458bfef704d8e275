"""The paper's offline experiments (section 4.1, appendix E), end to end on a generated log.

    table1  aggregation heuristics (acc, ma w=0.2/0.5/0.8, ap) of the CVR user embedding,
            on the CVR task                                         (paper Table 1)
    table2  six subsets of the four DERM embeddings, on the CTR task (paper Table 2)
    table4  three subsets, on the CVR task                          (paper Table 4, E.1)

Pipeline, each step the other packages' library function (nothing re-implemented here):

    derm_features.synthetic.generate.generate_logs                         the log
    trainers.upstream.train.train / infer.infer                  ctr and cvr upstream models:
        window fit on the first `window_days`, then one incremental fit per later day
        (paper B.2) and inference of each day with that day's snapshot (no back inference)
    materialize.job.materialize_day                              the four views, day by day
    trainers.downstream.training_set.build_training_set          Feast, point in time
    trainers.downstream.job.run_downstream                       each subset x seed

Downstream train days: from the day after the window to `eval_days` before the end; eval
days: the last `eval_days`. Lift of a configuration for seed s is
``100 * (metric(config, s) / metric(baseline, s) - 1)`` with the no-DERM baseline of the
same seed; the table gives its mean and standard deviation over seeds and the 95 %
paired-bootstrap interval of the seed-mean lift (all runs score the same eval rows).

Every step is skipped when its output exists, so an interrupted run resumes, and the
tables share one upstream run per work directory and log configuration.
"""

from __future__ import annotations

import datetime as dt
import io
import json
import statistics
from dataclasses import dataclass, replace
from pathlib import Path

from derm_features.core.workdir import Workdir
from derm_features.jobs.demo import DEMO_MODEL, DemoConfig
from trainers.downstream.training_set import EMBEDDING_KEYS

ALL = EMBEDDING_KEYS
TABLE2_SUBSETS = (
    ("ctr_user",),
    ("cvr_user",),
    ("ctr_user", "ctr_pin"),
    ("ctr_user", "cvr_user"),
    ("cvr_user", "cvr_pin"),
    ALL,
)
# Appendix E's Table 4 prints two rows (CVR user+Pin; CTR user+Pin + CVR user); its text
# says all four together do best, so the third subset is all four.
TABLE4_SUBSETS = (("cvr_user", "cvr_pin"), ("ctr_user", "ctr_pin", "cvr_user"), ALL)
TABLE1_HEURISTICS = (("acc", 0.8), ("ma", 0.2), ("ma", 0.5), ("ma", 0.8), ("ap", 0.8))

TABLES = {"table1": "cvr", "table2": "ctr", "table4": "cvr"}

# The paper's numbers, for the comparison column: label -> (ROC-AUC lift %, PR-AUC lift %).
PAPER = {
    "table1": {"acc": (0.02, None), "ma w=0.2": (0.03, None), "ma w=0.5": (0.06, None),
               "ma w=0.8": (0.09, None), "ap": (0.03, None)},
    "table2": {"ctr_user": (0.095, 0.2), "cvr_user": (0.059, 0.14),
               "ctr_user+ctr_pin": (0.160, 0.4), "ctr_user+cvr_user": (0.120, 0.25),
               "cvr_user+cvr_pin": (0.083, 0.19), "all four": (0.190, 0.46)},
    "table4": {"cvr_user+cvr_pin": (0.15, 1.1), "ctr_user+ctr_pin+cvr_user": (0.17, 1.79),
               "all four": (None, None)},
}  # fmt: skip


@dataclass(frozen=True)
class ExperimentConfig:
    """One `derm experiment` run."""

    table: str
    workdir: Path
    seeds: int = 5
    # The demo's log and windows (`jobs.demo.DemoConfig`): on smaller logs (12 days x 20k,
    # a 3-day window) the towers learn too little to lift anything (README, "experiments")
    users: int = DemoConfig.users
    pins: int = DemoConfig.pins
    days: int = DemoConfig.days
    impressions_per_day: int = DemoConfig.impressions_per_day
    log_seed: int = 0
    window_days: int = DemoConfig.window_days
    eval_days: int = 2
    upstream_epochs: int = 2
    downstream_epochs: int | None = None  # None: the task's default (job.TASK_DEFAULTS)
    start: dt.date = dt.date(2026, 1, 1)
    progress: bool = True

    def __post_init__(self) -> None:
        if self.table not in TABLES:
            raise ValueError(f"TABLE must be one of {sorted(TABLES)}, got '{self.table}'")
        if self.seeds < 1:
            raise ValueError(f"--seeds must be >= 1, got {self.seeds}")
        if self.days < self.window_days + self.eval_days + 1:
            raise ValueError(
                f"--days must be >= {self.window_days + self.eval_days + 1} (window "
                f"{self.window_days} + at least one downstream training day + eval "
                f"{self.eval_days}), got {self.days}"
            )

    def day(self, i: int) -> dt.date:
        return self.start + dt.timedelta(days=i)

    @property
    def train_range(self) -> tuple[dt.date, dt.date]:
        return self.day(self.window_days), self.day(self.days - self.eval_days - 1)

    @property
    def eval_range(self) -> tuple[dt.date, dt.date]:
        return self.day(self.days - self.eval_days), self.day(self.days - 1)

    def log_dir(self, workdir: Workdir) -> Path:
        return (
            workdir.root
            / "experiment_log"
            / (
                f"u{self.users}-p{self.pins}-d{self.days}-i{self.impressions_per_day}-s{self.log_seed}"
            )
        )


@dataclass(frozen=True)
class ExperimentResult:
    rows: list[dict]
    markdown: str
    markdown_path: Path
    chart_path: Path


def subset_label(keys: tuple[str, ...]) -> str:
    return "all four" if tuple(keys) == ALL else "+".join(keys) or "none"


def heuristic_label(heuristic: str, w: float) -> str:
    return f"ma w={w}" if heuristic == "ma" else heuristic


# ---------------------------------------------------------------- pipeline steps


def _say(cfg: ExperimentConfig, message: str) -> None:
    if cfg.progress:
        print(f"[experiment {cfg.table}] {message}", flush=True)


def generate(cfg: ExperimentConfig, workdir: Workdir) -> Path:
    """The generated log (reused when it exists); returns its logs/ directory."""
    from derm_features.synthetic import GenerateConfig, generate_logs

    out = cfg.log_dir(workdir)
    if not (out / "logs").is_dir():
        _say(cfg, f"generating the log under {out}")
        summary = generate_logs(
            GenerateConfig(
                out=out, users=cfg.users, pins=cfg.pins, days=cfg.days, start=cfg.start,
                seed=cfg.log_seed, impressions_per_day=cfg.impressions_per_day,
                progress=cfg.progress, overwrite=True,
            )
        )  # fmt: skip
        _say(cfg, str(summary))
    return out / "logs"


def upstream(cfg: ExperimentConfig, workdir: Workdir, logs: Path) -> None:
    """Both upstream models through the daily job's train and infer steps: the window fit,
    then per day an incremental fit and its inference (resumable by the same markers)."""
    from derm_features.jobs.pipeline import PipelineConfig, upstream_day

    pipeline = PipelineConfig(
        logs=logs,
        workdir=workdir,
        window_days=cfg.window_days,
        train={"epochs": cfg.upstream_epochs, "threads": 1},
        model=DEMO_MODEL,  # the demo's lighter network, so both models fit in minutes
        progress=False,
    )
    window_end = cfg.day(cfg.window_days - 1)
    for model in workdir.spec.model_names:
        for i in range(cfg.window_days - 1, cfg.days):
            day = cfg.day(i)
            _say(cfg, f"upstream {model} {day}: {'window fit' if day == window_end else 'day'}")
            trained = upstream_day(pipeline, model, day, cfg.start if day == window_end else None)
            if trained["train"].get("skipped"):  # no positives: no snapshot, no outputs
                _say(cfg, f"upstream {model} {day}: {trained['train']['reason']}")


def materialize(
    cfg: ExperimentConfig,
    workdir: Workdir,
    views: tuple[tuple[str, str], ...],
    heuristic: str = "ma",
    w: float = 0.8,
) -> None:
    """Materializes `views` for every inferred day (offline only), skipping done days.

    As in the daily job, the window's back-inferred days are folded into the window's last
    day (`fold_from`). A day the upstream model skipped (no positives) has no outputs; the
    next day builds on the pool before it (allow_gap), carrying every entity over, as a
    missed day would."""
    from derm_features.core.workdir import days_in_dir
    from materialize.job import MaterializeConfig, materialize_day

    window_end = cfg.day(cfg.window_days - 1)
    for model, entity in views:
        done = set(days_in_dir(workdir.pool_dir(model, entity)))
        for day in days_in_dir(workdir.daily_dir(model, entity)):
            if day not in done and day >= window_end:
                materialize_day(
                    MaterializeConfig(
                        workdir=workdir, model=model, entity=entity, day=day,
                        heuristic=heuristic, w=w, online=False, allow_gap=True,
                        fold_from=cfg.start if day == window_end else None,
                    )
                )  # fmt: skip
        _say(cfg, f"materialized {model}_{entity} ({heuristic}, w={w})")


def training_sets(cfg: ExperimentConfig, workdir: Workdir, logs: Path, keys: tuple[str, ...]):
    """The train and eval training sets with `keys`, built once per work directory."""
    from derm_features.feast.repo import apply, has_registry
    from trainers.downstream.training_set import (
        TrainingSetConfig,
        build_training_set,
        open_training_set,
    )

    out = []
    for start, end in (cfg.train_range, cfg.eval_range):
        ts_cfg = TrainingSetConfig(logs, workdir, start, end, keys)
        if (ts_cfg.output_dir() / "meta.json").is_file():
            out.append(open_training_set(ts_cfg.output_dir()))
            continue
        if keys and not has_registry(workdir):
            apply(workdir, quiet=True)
        out.append(build_training_set(ts_cfg))
    return tuple(out)


def downstream_code_digest() -> str:
    """sha256 (16 hex) of the source of the packages a downstream run executes
    (`trainers.downstream`, `trainers.modules`, `trainers.features`): a changed model or
    training loop is a changed run, as a changed setting is."""
    import hashlib
    from pathlib import Path

    import trainers

    root = Path(trainers.__file__).parent
    sha = hashlib.sha256()
    for package in ("downstream", "modules", "features"):
        for path in sorted((root / package).glob("*.py")):
            sha.update(path.name.encode() + b"\0" + path.read_bytes())
    return sha.hexdigest()[:16]


def run_key(run, keys: tuple[str, ...]) -> str:
    """The cache name of one downstream run: task, subset, seed and a digest of every
    training setting and of the downstream code (`downstream_code_digest`), so neither a
    changed setting nor a changed model reuses an old run."""
    import dataclasses
    import hashlib

    settings = {
        f.name: getattr(run, f.name)
        for f in dataclasses.fields(run)
        if f.name not in ("logs", "workdir", "embeddings", "seed", "threads", "set_format")
    }
    # the task defaults a None setting stands for: a changed default is a changed setting
    settings |= {"_l2": (run.table_l2, run.matrix_l2, run.wide_part)}
    settings |= {"_code": downstream_code_digest()}
    digest = hashlib.sha256(repr(sorted(settings.items())).encode()).hexdigest()[:10]
    return f"{run.task}_{subset_label(keys).replace(' ', '_')}_s{run.seed}_{digest}"


def downstream_config(cfg: ExperimentConfig, logs: Path, workdir: Workdir, keys=(), seed=0):
    """The DownstreamConfig of one run of this experiment (task, days, epochs by the table)."""
    from trainers.downstream.job import DownstreamConfig, task_defaults

    task = TABLES[cfg.table]
    epochs, batch_size = task_defaults(task)
    return DownstreamConfig(
        task=task, logs=logs, workdir=workdir,
        train_start=cfg.train_range[0], train_end=cfg.train_range[1],
        eval_start=cfg.eval_range[0], eval_end=cfg.eval_range[1],
        embeddings=tuple(keys), seed=seed, epochs=cfg.downstream_epochs or epochs,
        batch_size=batch_size,
    )  # fmt: skip


def encoding(cfg: ExperimentConfig, logs: Path, workdir: Workdir, sets):
    """A function giving the `job.Encoded` of `sets` (every embedding they hold), encoded
    on first use and then shared by every run and baseline that reads them."""
    from functools import cache

    from trainers.downstream.job import encode

    @cache
    def encoded():
        return encode(downstream_config(cfg, logs, workdir, sets[0].embeddings), *sets)

    return encoded


def downstream_runs(
    cfg: ExperimentConfig, logs: Path, workdir: Workdir, encoded, keys: tuple[str, ...]
) -> list[dict]:
    """One downstream run per seed with embedding `keys` on `encoded()` (see `encoding`),
    cached in metrics/downstream/: the metrics JSON and the eval labels and predictions,
    `.npz`, for paired intervals."""
    import numpy as np

    from derm_features.core.atomic import write_bytes_atomic, write_text_atomic
    from trainers.downstream.job import run_downstream

    results = []
    for seed in range(cfg.seeds):
        run = downstream_config(cfg, logs, workdir, keys, seed)
        cache = workdir.metrics / "downstream" / f"{run_key(run, keys)}.json"
        if cache.is_file() and cache.with_suffix(".npz").is_file():
            metrics = json.loads(cache.read_text())
            with np.load(cache.with_suffix(".npz")) as saved:
                metrics["_labels"], metrics["_probs"] = saved["labels"], saved["probs"]
            results.append(metrics)
            continue
        metrics, labels, probs = run_downstream(
            run, encoded=encoded(), progress=False, return_predictions=True
        )
        buffer = io.BytesIO()
        np.savez(buffer, labels=labels, probs=probs)
        write_bytes_atomic(buffer.getvalue(), cache.with_suffix(".npz"))
        write_text_atomic(json.dumps(metrics), cache)
        _say(cfg, f"{run.task} {subset_label(keys)} seed {seed}: roc_auc {metrics['roc_auc']:.4f}"
                  f" pr_auc {metrics['pr_auc']:.4f} epoch {metrics['best_epoch']}")  # fmt: skip
        results.append({**metrics, "_labels": labels, "_probs": probs})
    return results


# ---------------------------------------------------------------- summaries (pure)


def lift_rows(
    baseline: list[dict], configs: dict[str, list[dict]], resamples: int = 1000
) -> list[dict]:
    """Per configuration: mean and standard deviation over seeds of the % lifts, and the 95 %
    paired-bootstrap interval of the seed-mean lift (every run scores the same eval rows, so
    replicate r weights the rows of every run alike; `evaluation.bootstrap`)."""
    import numpy as np

    from trainers.downstream.evaluation import bootstrap, interval

    for b in baseline:
        if b["eval_positive_rate"] == 0 or b["roc_auc"] == 0 or b["pr_auc"] == 0:
            raise ValueError(
                f"the {b['task']} eval days hold no positives ({b['eval_rows']} eval rows), so "
                "there is no AUC to lift: generate more impressions or days"
            )
    labels = baseline[0]["_labels"]
    predictions = {("none", s): b["_probs"] for s, b in enumerate(baseline)}
    for label, runs in configs.items():
        predictions.update({(label, s): r["_probs"] for s, r in enumerate(runs)})
    reps = bootstrap(labels, predictions, resamples)
    rows = []
    for label, runs in configs.items():
        row = {"config": label, "seeds": len(runs)}
        for metric in ("roc_auc", "pr_auc"):
            lifts = [
                100.0 * (r[metric] / b[metric] - 1.0) for r, b in zip(runs, baseline, strict=True)
            ]
            row[f"{metric}_lift_mean"] = statistics.fmean(lifts)
            row[f"{metric}_lift_std"] = statistics.stdev(lifts) if len(lifts) > 1 else 0.0
            row[f"{metric}_mean"] = statistics.fmean(r[metric] for r in runs)
            paired = np.mean(
                [100.0 * (reps[(label, s)][metric] / reps[("none", s)][metric] - 1.0)
                 for s in range(len(runs))],
                axis=0,
            )  # fmt: skip
            row[f"{metric}_lift_ci"] = list(interval(paired))
        rows.append(row)
    return rows


def markdown_table(table: str, rows: list[dict], baseline: list[dict], about: str) -> str:
    def paper(label: str, i: int) -> str:
        value = PAPER[table].get(label, (None, None))[i]
        return "n/a" if value is None else f"{value:+.3f}"

    def lift(r: dict, metric: str) -> str:
        lo, hi = r[f"{metric}_lift_ci"]
        return (f"{r[f'{metric}_lift_mean']:+.2f} ± {r[f'{metric}_lift_std']:.2f} "
                f"[{lo:+.2f}, {hi:+.2f}]")  # fmt: skip

    base_roc = statistics.fmean(b["roc_auc"] for b in baseline)
    base_pr = statistics.fmean(b["pr_auc"] for b in baseline)
    positives = baseline[0].get("eval_positives")
    lines = [
        f"### {table}: {about}",
        "",
        f"Baseline (no DERM): ROC-AUC {base_roc:.4f}, PR-AUC {base_pr:.4f} "
        f"(mean of {len(baseline)} seeds; {baseline[0]['eval_rows']} eval rows, {positives} "
        "positives). Lifts in %: mean ± std over seeds [95 % paired-bootstrap interval of "
        "the seed mean].",
        "",
        "| config | ROC-AUC lift % | PR-AUC lift % | ROC-AUC | PR-AUC | paper ROC lift % "
        "| paper PR lift % |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r in rows:
        lines.append(
            f"| {r['config']} | {lift(r, 'roc_auc')} | {lift(r, 'pr_auc')} "
            f"| {r['roc_auc_mean']:.4f} | {r['pr_auc_mean']:.4f} "
            f"| {paper(r['config'], 0)} | {paper(r['config'], 1)} |"
        )
    return "\n".join(lines) + "\n"


def chart(rows: list[dict], title: str, path: Path) -> None:
    """Grouped bars of ROC-AUC and PR-AUC lift (seed mean) with their 95 % paired-bootstrap
    intervals as error bars (PNG, Agg backend)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    labels = [r["config"] for r in rows]
    x = np.arange(len(labels))
    fig, ax = plt.subplots(figsize=(max(6.0, 1.3 * len(labels)), 4.0))
    for offset, metric, name in ((-0.2, "roc_auc", "ROC-AUC"), (0.2, "pr_auc", "PR-AUC")):
        ax.bar(x + offset, [r[f"{metric}_lift_mean"] for r in rows], 0.4,
               yerr=np.array([[r[f"{metric}_lift_mean"] - r[f"{metric}_lift_ci"][0],
                               r[f"{metric}_lift_ci"][1] - r[f"{metric}_lift_mean"]]
                              for r in rows]).T,
               capsize=3, label=name)  # fmt: skip
    ax.axhline(0.0, color="black", linewidth=0.8)
    ax.set_xticks(x, labels, rotation=20, ha="right")
    ax.set_ylabel("lift over no-DERM (%), 95 % paired interval")
    ax.set_title(title)
    ax.legend()
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".tmp-{path.name}")
    fig.savefig(tmp, format="png", dpi=120)
    plt.close(fig)
    tmp.replace(path)


# ---------------------------------------------------------------- the runner


def run_experiment(cfg: ExperimentConfig) -> ExperimentResult:
    """Runs (or resumes) `cfg.table` end to end; writes and returns the Markdown and chart."""
    from derm_features.core.atomic import write_text_atomic

    workdir = Workdir.resolve(cfg.workdir)
    check_pipeline(cfg, workdir)
    logs = generate(cfg, workdir)
    upstream(cfg, workdir, logs)
    configs: dict[str, list[dict]] = {}
    if cfg.table == "table1":
        about = "aggregation heuristics of the CVR user embedding, CVR task"
        base = encoding(cfg, logs, workdir, training_sets(cfg, workdir, logs, ()))
        baseline = downstream_runs(cfg, logs, workdir, base, ())
        for heuristic, w in TABLE1_HEURISTICS:
            variant = heuristic_workdir(workdir, heuristic, w)
            materialize(cfg, variant, (("cvr", "user"),), heuristic, w)
            sets = encoding(cfg, logs, variant, training_sets(cfg, variant, logs, ("cvr_user",)))
            label = heuristic_label(heuristic, w)
            configs[label] = downstream_runs(cfg, logs, variant, sets, ("cvr_user",))
    else:
        subsets = TABLE2_SUBSETS if cfg.table == "table2" else TABLE4_SUBSETS
        about = f"DERM embedding subsets, {TABLES[cfg.table].upper()} task"
        materialize(cfg, workdir, tuple((m, e) for m, e, _ in workdir.spec.views()))
        # one fetch and one encoding; each run reads its subset
        base = encoding(cfg, logs, workdir, training_sets(cfg, workdir, logs, ALL))
        baseline = downstream_runs(cfg, logs, workdir, base, ())
        for keys in subsets:
            configs[subset_label(keys)] = downstream_runs(cfg, logs, workdir, base, keys)
    rows = lift_rows(baseline, configs)
    simple = baseline_table(cfg, logs, workdir, base, baseline[0])
    sizes = (
        f"log: {cfg.users} users, {cfg.pins} Pins, {cfg.days} days x {cfg.impressions_per_day} "
        f"impressions (seed {cfg.log_seed}); downstream train {cfg.train_range[0]}.."
        f"{cfg.train_range[1]} ({baseline[0]['train_rows']} rows), eval {cfg.eval_range[0]}.."
        f"{cfg.eval_range[1]} ({baseline[0]['eval_rows']} rows, positive rate "
        f"{baseline[0]['eval_positive_rate']:.4f}); seeds 0..{cfg.seeds - 1}"
    )
    markdown = markdown_table(cfg.table, rows, baseline, about) + f"\n{sizes}\n\n{simple}"
    out_dir = workdir.root / "experiments" / cfg.table
    markdown_path, chart_path = out_dir / f"{cfg.table}.md", out_dir / f"{cfg.table}.png"
    write_text_atomic(markdown, markdown_path)
    public = [{k: v for k, v in b.items() if not k.startswith("_")} for b in baseline]
    write_text_atomic(json.dumps({"rows": rows, "baseline": public}, indent=2),
                      out_dir / f"{cfg.table}.json")  # fmt: skip
    chart(rows, f"{cfg.table}: {about}", chart_path)
    return ExperimentResult(rows, markdown, markdown_path, chart_path)


def baseline_table(cfg: ExperimentConfig, logs: Path, workdir: Workdir, encoded, run: dict) -> str:
    """The prior, per-Pin rate and logistic regression on the same eval rows as `run` (the
    no-DERM model of seed 0), with intervals (`job.score_baselines`, `evaluation.compare`)."""
    from trainers.downstream.evaluation import compare, markdown
    from trainers.downstream.job import NO_DERM, score_baselines

    predictions = score_baselines(downstream_config(cfg, logs, workdir), encoded(), [()])
    result = compare(run["_labels"], predictions | {f"{NO_DERM} (seed 0)": run["_probs"]},
                     reference=f"{NO_DERM} (seed 0)")  # fmt: skip
    return markdown(result, f"{cfg.table}: simple baselines on the same eval rows")


def check_pipeline(cfg: ExperimentConfig, workdir: Workdir) -> None:
    """Refuses a work directory whose upstream artifacts came from a different pipeline
    configuration (they would be silently reused); records the configuration otherwise."""
    from derm_features.core.atomic import write_text_atomic

    identity = {
        "users": cfg.users, "pins": cfg.pins, "days": cfg.days, "start": str(cfg.start),
        "impressions_per_day": cfg.impressions_per_day, "log_seed": cfg.log_seed,
        "window_days": cfg.window_days, "upstream_epochs": cfg.upstream_epochs,
    }  # fmt: skip
    path = workdir.root / "experiments" / "pipeline.json"
    if path.is_file():
        recorded = json.loads(path.read_text())
        if recorded != identity:
            changed = sorted(k for k in identity if recorded.get(k) != identity[k])
            raise ValueError(
                f"--workdir {workdir.root} holds an experiment pipeline with other settings "
                f"({', '.join(changed)}); use a new --workdir for a new configuration"
            )
        return
    write_text_atomic(json.dumps(identity, indent=2), path)


def heuristic_workdir(workdir: Workdir, heuristic: str, w: float) -> Workdir:
    """A work directory for one heuristic: its own pool, offline views and Feast registry,
    sharing the main one's daily tower outputs (a symlink), so upstream runs once."""
    variant = Workdir(
        workdir.root / "table1" / heuristic_label(heuristic, w).replace(" ", "_"),
        replace(workdir.spec, heuristic=heuristic, w=w),
        workdir.redis_url,
    )
    link = variant.root / "daily"
    if not link.exists():
        variant.root.mkdir(parents=True, exist_ok=True)
        link.symlink_to(workdir.root / "daily", target_is_directory=True)
    return variant
