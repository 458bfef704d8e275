"""Eval metrics with their noise: ROC-AUC, PR-AUC and log loss, with bootstrap intervals.

A downstream result means little without its spread: an eval set with 77 positives has an
ROC-AUC standard error near 0.035, larger than most lifts. Every metric here is computed
under per-row weights, so one code path gives the point estimate (all weights 1) and each
bootstrap replicate (Poisson(1) weights, the large-sample bootstrap of Hanley & MacGibbon /
Chamandy et al. 2012), and two models scored on the same rows share the same replicates
(a paired bootstrap: the interval of their difference excludes the rows' common noise).

    ROC-AUC  = sum_g P_g (N_<g + N_g / 2) / (P N)      tie groups g of equal score
    PR-AUC   = sum_g (P_g / P) * precision(>= s_g)     average precision, as scikit-learn's
    log loss = -sum_i w_i [y_i log p_i + (1 - y_i) log(1 - p_i)] / sum_i w_i
    best constant's log loss = the same at p_i = mean(y), the eval rows' own rate

P_g and N_g are the positive and negative weight in group g, N_<g the negative weight below
it. Tests compare each with scikit-learn's `sample_weight` version.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass

import numpy as np

EPS = 1e-7
# Fewer eval positives than this and an AUC's standard error passes ~0.02: say so.
FEW_POSITIVES = 200


@dataclass(frozen=True)
class _Sorted:
    """Labels in ascending score order, with the boundaries of equal-score groups."""

    order: np.ndarray  # [n] argsort of the scores
    y: np.ndarray  # [n] float64 labels in that order
    starts: np.ndarray  # [G] first index of each tie group


def _sorted(labels: np.ndarray, scores: np.ndarray) -> _Sorted:
    order = np.argsort(scores, kind="stable")
    s = scores[order]
    starts = np.flatnonzero(np.r_[True, s[1:] != s[:-1]])
    return _Sorted(order, labels[order].astype(np.float64), starts)


def _auc_and_ap(sorted_: _Sorted, weights: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """ROC-AUC and average precision of each weight row; weights [R, n] in sorted order."""
    pos = np.add.reduceat(weights * sorted_.y, sorted_.starts, axis=1)  # [R, G]
    neg = np.add.reduceat(weights * (1.0 - sorted_.y), sorted_.starts, axis=1)
    p, n = pos.sum(1), neg.sum(1)
    below = np.cumsum(neg, axis=1) - neg
    with np.errstate(invalid="ignore", divide="ignore"):
        auc = (pos * (below + 0.5 * neg)).sum(1) / (p * n)
        # descending thresholds: everything at or above group g is predicted positive
        pos_above = np.cumsum(pos[:, ::-1], axis=1)[:, ::-1]
        all_above = np.cumsum((pos + neg)[:, ::-1], axis=1)[:, ::-1]
        precision = np.where(all_above > 0, pos_above / all_above, 0.0)
        ap = (pos * precision).sum(1) / p
    return auc, ap


def _log_loss(labels: np.ndarray, probs: np.ndarray, weights: np.ndarray) -> np.ndarray:
    p = np.clip(probs, EPS, 1 - EPS)
    per_row = -(labels * np.log(p) + (1 - labels) * np.log1p(-p))
    return (weights * per_row).sum(1) / weights.sum(1)


def _best_constant_log_loss(labels: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """[R] log loss, under weights [R, n], of the constant at the unweighted rows' rate (the
    best constant on the eval rows). A fixed predictor, so a model's difference from it is
    paired: a replicate's own rate would beat every constant in every replicate."""
    rate = np.full(len(labels), labels.mean())
    return _log_loss(labels, rate, weights)


def point_metrics(labels: np.ndarray, probs: np.ndarray) -> dict[str, float]:
    """roc_auc, pr_auc and logloss of probabilities `probs` [n] against 0/1 `labels` [n].

    An eval set with one class only has no AUC: roc_auc and pr_auc are NaN then.
    """
    labels = np.asarray(labels, dtype=np.float64)
    probs = np.asarray(probs, dtype=np.float64)
    ones = np.ones((1, len(labels)))
    auc, ap = _auc_and_ap(_sorted(labels, probs), ones)
    return {
        "roc_auc": float(auc[0]),
        "pr_auc": float(ap[0]),
        "logloss": float(_log_loss(labels, probs, ones)[0]),
    }


def _replicates(n: int, resamples: int, seed: int, chunk: int = 64) -> Iterator[np.ndarray]:
    """Poisson(1) bootstrap weights, [<= chunk, n] at a time, `resamples` rows in all."""
    rng = np.random.default_rng(seed)
    for start in range(0, resamples, chunk):
        yield rng.poisson(1.0, size=(min(chunk, resamples - start), n)).astype(np.float64)


def bootstrap(
    labels: np.ndarray,
    predictions: Mapping[str, np.ndarray],
    resamples: int = 1000,
    seed: int = 0,
) -> dict[str, dict[str, np.ndarray]]:
    """Bootstrap replicates of every metric of every prediction, on shared resamples.

    Args:
        labels (np.ndarray): [n] 0/1 eval labels.
        predictions (Mapping[str, np.ndarray]): name -> [n] probabilities of the same rows.
        resamples (int): bootstrap replicates R.
        seed (int): seed of the resampling (the same seed gives the same intervals).

    Returns:
        dict: name -> {"roc_auc", "pr_auc", "logloss", "logloss_vs_constant"} -> [R]
        replicate values; "logloss_vs_constant" is the log loss minus the best constant's on
        the same replicate. Replicate r of every prediction uses the same row weights, so
        differences are paired.
    """
    labels = np.asarray(labels, dtype=np.float64)
    sorts = {name: _sorted(labels, np.asarray(p, np.float64)) for name, p in predictions.items()}
    metrics = ("roc_auc", "pr_auc", "logloss", "logloss_vs_constant")
    out: dict[str, dict[str, list]] = {n: {m: [] for m in metrics} for n in sorts}
    for weights in _replicates(len(labels), resamples, seed):
        constant = _best_constant_log_loss(labels, weights)
        for name, probs in predictions.items():
            s = sorts[name]
            auc, ap = _auc_and_ap(s, weights[:, s.order])
            loss = _log_loss(labels, np.asarray(probs, np.float64), weights)
            out[name]["roc_auc"].append(auc)
            out[name]["pr_auc"].append(ap)
            out[name]["logloss"].append(loss)
            out[name]["logloss_vs_constant"].append(loss - constant)
    return {n: {m: np.concatenate(v) for m, v in ms.items()} for n, ms in out.items()}


def interval(values: np.ndarray, level: float = 0.95) -> tuple[float, float]:
    """The percentile interval of bootstrap replicates (NaN replicates are left out)."""
    values = values[np.isfinite(values)]
    if not len(values):
        return (float("nan"), float("nan"))
    tail = 100 * (1 - level) / 2
    lo, hi = np.percentile(values, [tail, 100 - tail])
    return float(lo), float(hi)


def compare(
    labels: np.ndarray,
    predictions: Mapping[str, np.ndarray],
    reference: str,
    resamples: int = 1000,
    seed: int = 0,
) -> dict:
    """Every prediction's metrics with 95 % intervals, and its paired lift over `reference`.

    Returns a JSON-ready dict:
        {"eval_rows", "eval_positives", "resamples", "warning" (or None),
         "best_constant_logloss",
         "models": {name: {"roc_auc": x, "roc_auc_ci": [lo, hi], "pr_auc": ..., "pr_auc_ci",
                           "logloss": ..., "logloss_ci",
                           "logloss_vs_constant", "logloss_vs_constant_ci",
                           "roc_auc_lift_pct", "roc_auc_lift_ci", "pr_auc_lift_pct",
                           "pr_auc_lift_ci"}}}
    The lifts are 100 * (metric / metric(reference) - 1), their intervals from the paired
    replicates; they are absent for the reference itself. "logloss_vs_constant" is the log
    loss minus the best constant's (the eval rows' own rate), with its paired interval: an
    interval above 0 says the model is worse than a constant, one that holds 0 that the eval
    set cannot tell them apart.
    """
    labels = np.asarray(labels, dtype=np.float64)
    if reference not in predictions:
        raise ValueError(f"reference {reference!r} is not among {sorted(predictions)}")
    reps = bootstrap(labels, predictions, resamples, seed)
    positives = int(labels.sum())
    models = {}
    base = point_metrics(labels, predictions[reference])
    best_constant = (
        float(_best_constant_log_loss(labels, np.ones((1, len(labels))))[0])
        if 0 < positives < len(labels)
        else float("nan")
    )
    for name, probs in predictions.items():
        point = point_metrics(labels, probs)
        row: dict[str, object] = {}
        for metric, value in point.items():
            row[metric] = value
            row[f"{metric}_ci"] = list(interval(reps[name][metric]))
        row["logloss_vs_constant"] = point["logloss"] - best_constant
        row["logloss_vs_constant_ci"] = list(interval(reps[name]["logloss_vs_constant"]))
        if name != reference:
            for metric in ("roc_auc", "pr_auc"):
                row[f"{metric}_lift_pct"] = 100.0 * (point[metric] / base[metric] - 1.0)
                paired = 100.0 * (reps[name][metric] / reps[reference][metric] - 1.0)
                row[f"{metric}_lift_ci"] = list(interval(paired))
        models[name] = row
    warning = None
    if positives < FEW_POSITIVES:
        warning = (
            f"only {positives} eval positives (< {FEW_POSITIVES}): AUC intervals are wide; "
            "read differences inside them as noise"
        )
    return {
        "eval_rows": len(labels),
        "eval_positives": positives,
        "resamples": resamples,
        "warning": warning,
        "best_constant_logloss": best_constant,
        "reference": reference,
        "models": models,
    }


def markdown(result: dict, title: str = "") -> str:
    """`compare`'s result as a Markdown table (one row per model, intervals in brackets)."""

    def ci(row: dict, key: str, fmt: str) -> str:
        if key not in row:
            return ""
        lo, hi = row[key]
        return f"[{lo:{fmt}}, {hi:{fmt}}]"

    lines = [f"### {title}", ""] if title else []
    lines += [
        f"Eval rows {result['eval_rows']}, positives {result['eval_positives']}; 95 % bootstrap "
        f"intervals over {result['resamples']} resamples; lifts paired against "
        f"`{result['reference']}`. Best constant's log loss "
        f"{result['best_constant_logloss']:.4f}.",
        "",
        "| model | ROC-AUC | PR-AUC | log loss | log loss - best constant's "
        "| ROC-AUC lift % | PR-AUC lift % |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for name, r in result["models"].items():
        lift = {
            m: f"{r[f'{m}_lift_pct']:+.2f} {ci(r, f'{m}_lift_ci', '+.2f')}"
            if f"{m}_lift_pct" in r
            else "(reference)"
            for m in ("roc_auc", "pr_auc")
        }
        lines.append(
            f"| {name} | {r['roc_auc']:.4f} {ci(r, 'roc_auc_ci', '.4f')} "
            f"| {r['pr_auc']:.4f} {ci(r, 'pr_auc_ci', '.4f')} "
            f"| {r['logloss']:.4f} {ci(r, 'logloss_ci', '.4f')} "
            f"| {r['logloss_vs_constant']:+.4f} {ci(r, 'logloss_vs_constant_ci', '+.4f')} "
            f"| {lift['roc_auc']} | {lift['pr_auc']} |"
        )
    if result.get("warning"):
        lines += ["", f"**Warning:** {result['warning']}."]
    return "\n".join(lines) + "\n"
