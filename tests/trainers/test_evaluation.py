"""Eval metrics and their intervals against scikit-learn, and the baselines' inputs."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import average_precision_score, log_loss, roc_auc_score

from trainers.downstream.evaluation import (
    FEW_POSITIVES,
    _auc_and_ap,
    _log_loss,
    _sorted,
    compare,
    markdown,
    point_metrics,
)


def _data(n=2000, seed=0, ties=False):
    rng = np.random.default_rng(seed)
    y = (rng.random(n) < 0.1).astype(float)
    p = 1 / (1 + np.exp(-(rng.normal(size=n) + 1.2 * y - 2)))
    if ties:
        p = np.round(p, 2)  # many equal scores
    return y, p


@pytest.mark.parametrize("ties", [False, True])
def test_point_metrics_equal_scikit_learn(ties):
    y, p = _data(ties=ties)
    got = point_metrics(y, p)
    assert got["roc_auc"] == pytest.approx(roc_auc_score(y, p), abs=1e-12)
    assert got["pr_auc"] == pytest.approx(average_precision_score(y, p), abs=1e-12)
    assert got["logloss"] == pytest.approx(log_loss(y, p), abs=1e-12)


def test_weighted_metrics_equal_scikit_learns_sample_weight():
    y, p = _data(ties=True, seed=1)
    w = np.random.default_rng(2).poisson(1.0, size=len(y)).astype(float)
    s = _sorted(y, p)
    auc, ap = _auc_and_ap(s, w[s.order][None, :])
    assert auc[0] == pytest.approx(roc_auc_score(y, p, sample_weight=w), abs=1e-12)
    assert ap[0] == pytest.approx(average_precision_score(y, p, sample_weight=w), abs=1e-12)
    got = _log_loss(y, p, w[None, :])[0]
    assert got == pytest.approx(log_loss(y, p, sample_weight=w), abs=1e-12)


def test_compare_intervals_cover_the_point_and_the_paired_lift_is_tighter():
    y, p = _data(n=3000, seed=3)
    rng = np.random.default_rng(4)
    better = p + 0.02 * y  # a small, real improvement on the same rows
    noise = np.clip(p + rng.normal(0, 0.05, len(p)), 1e-4, 1 - 1e-4)
    result = compare(y, {"base": p, "better": better, "noise": noise}, "base", resamples=400)
    assert result["eval_positives"] == int(y.sum()) and result["resamples"] == 400
    for row in result["models"].values():
        lo, hi = row["roc_auc_ci"]
        assert lo <= row["roc_auc"] <= hi
    b = result["models"]["better"]
    # the paired interval of the lift excludes 0, while the unpaired AUC intervals overlap
    assert b["roc_auc_lift_ci"][0] > 0
    assert b["roc_auc_ci"][0] < result["models"]["base"]["roc_auc_ci"][1]
    assert "roc_auc_lift_pct" not in result["models"]["base"]
    assert result["best_constant_logloss"] == pytest.approx(log_loss(y, np.full(len(y), y.mean())))
    table = markdown(result, "t")
    assert "| better |" in table and "(reference)" in table


def test_compare_warns_on_few_positives_and_is_seeded():
    y, p = _data(n=800, seed=5)
    assert y.sum() < FEW_POSITIVES
    a = compare(y, {"m": p, "n": p[::-1].copy()}, "m", resamples=200, seed=1)
    b = compare(y, {"m": p, "n": p[::-1].copy()}, "m", resamples=200, seed=1)
    assert "eval positives" in a["warning"]
    assert a["models"]["n"]["roc_auc_lift_ci"] == b["models"]["n"]["roc_auc_lift_ci"]


def test_log_loss_against_the_best_constant_has_a_paired_interval():
    """A constant at the eval rate sits at 0; a confidently wrong model's interval lies above
    0; a model with signal lies below; a constant off the eval rate by a little is inside the
    noise of a few positives (its interval holds 0)."""
    y, p = _data(n=3000, seed=6)
    rate = y.mean()
    rng = np.random.default_rng(7)
    predictions = {
        "constant": np.full(len(y), rate),
        "model": p,
        "wrong": np.clip(1 - p, 1e-4, 1 - 1e-4),
        "near constant": np.full(len(y), rate * 1.05),
        "noise": np.clip(rate * np.exp(rng.normal(0, 0.5, len(y))), 1e-4, 1 - 1e-4),
    }
    result = compare(y, predictions, "constant", resamples=400)
    rows = result["models"]
    assert rows["constant"]["logloss_vs_constant"] == pytest.approx(0.0, abs=1e-12)
    assert rows["constant"]["logloss_vs_constant_ci"] == pytest.approx([0.0, 0.0], abs=1e-12)
    assert rows["wrong"]["logloss_vs_constant_ci"][0] > 0
    assert rows["noise"]["logloss_vs_constant_ci"][0] > 0
    assert rows["model"]["logloss_vs_constant_ci"][1] < 0
    lo, hi = rows["near constant"]["logloss_vs_constant_ci"]
    assert rows["near constant"]["logloss_vs_constant"] > 0 and lo < 0 < hi
    for name, row in rows.items():
        assert row["logloss_vs_constant"] == pytest.approx(
            row["logloss"] - result["best_constant_logloss"], abs=1e-12
        ), name
    assert "log loss - best constant's" in markdown(result)
