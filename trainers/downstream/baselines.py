"""Simple baselines scored on the same eval rows as the downstream models.

    prior                 the training rows' positive rate, for every row (AUC 0.5 by design)
    pin rate              the Pin's smoothed rate before the event's day (`counts.py`): CTR
                          for the ctr task, post-click CVR for cvr
    logistic regression   scikit-learn's L2 logistic regression (C picked on the validation
                          split by log loss) on the same inputs as the
                          downstream model: one-hot hashed categoricals (ids included when
                          on), bag of the sequences' hashed ids, standardised dense,
                          pretrained and count features, and the DERM embeddings with their
                          user-Pin scores if given

A downstream model that does not beat these on the same rows has learnt nothing a team
would pay for; the README's tables print them beside every result.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from torch import Tensor

from trainers.downstream.counts import FEATURES
from trainers.features.tokens import TOWERS

C_GRID = (0.01, 0.1, 1.0)  # inverse L2 strengths tried on the validation split
PIN_RATE = {"click": FEATURES.index("pin_ctr"), "conversion": FEATURES.index("pin_cvr")}


def prior(train_labels: np.ndarray, n: int) -> np.ndarray:
    """[n] copies of the mean of `train_labels` (the constant a calibrated model starts at)."""
    return np.full(n, float(np.mean(train_labels)))


def pin_rate(counts: Tensor, task: str) -> np.ndarray:
    """[n] the Pin's smoothed rate of `task` (click | conversion) from the count features."""
    if counts.shape[1] != len(FEATURES):
        raise ValueError("the pin-rate baseline needs the count features (count_features on)")
    return counts[:, PIN_RATE[task]].double().numpy()


def design_matrix(tensors: dict[str, Tensor], num_buckets: int, scale=None):
    """The logistic regression's inputs: a CSR matrix [n, num_buckets + F] and the
    (mean, std) of its F dense columns (pass the training rows' `scale` for eval rows)."""
    from scipy import sparse

    n = len(tensors["labels"])
    cols, vals = [], []
    for tower in TOWERS:
        cat = tensors[f"{tower}_cat"].numpy()
        if cat.shape[1]:
            cols.append(cat)
            vals.append(np.ones(cat.shape, np.float32))
        seq = tensors[f"{tower}_seq"].numpy().reshape(n, -1)
        if seq.shape[1]:
            length = np.maximum((seq > 0).sum(1, keepdims=True), 1)
            cols.append(seq)
            vals.append(((seq > 0) / length).astype(np.float32))  # padding 0 weighs 0
    one_hot = sparse.csr_matrix(
        (np.concatenate(vals, 1).ravel(), np.concatenate(cols, 1).ravel(),
         np.arange(0, n * sum(c.shape[1] for c in cols) + 1, sum(c.shape[1] for c in cols))),
        shape=(n, num_buckets),
    ) if cols else sparse.csr_matrix((n, num_buckets), dtype=np.float32)  # fmt: skip
    dense = np.concatenate(
        [tensors[f"{t}_{k}"].numpy().reshape(n, -1) for t in TOWERS for k in ("dense", "pre")]
        + [tensors[k].numpy() for k in ("counts", "derm", "derm_present", "derm_score")],
        axis=1,
    ).astype(np.float64)
    if scale is None:
        scale = (dense.mean(0), dense.std(0) + 1e-6)
    dense = (dense - scale[0]) / scale[1]
    return sparse.hstack([one_hot, sparse.csr_matrix(dense)], format="csr"), scale


def logistic_regression(
    train: dict[str, Tensor],
    val: dict[str, Tensor],
    evaluate: Sequence[dict[str, Tensor]],
    task_index: int,
    num_buckets: int,
    seed: int = 0,
    grid: Sequence[float] = C_GRID,
) -> tuple[list[np.ndarray], float]:
    """Fits on the labelled `train` rows of task `task_index`, with the inverse L2 strength C
    of `grid` that gives `val` the lowest log loss (the model's own early-stopping split);
    returns (P(y=1) [n_i] of the labelled rows of each of `evaluate`, in the order
    `DownstreamSystem.predict` gives, and the C chosen)."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import log_loss

    def labelled(t):
        mask = t["label_mask"][:, task_index].numpy()
        return {k: v[mask] for k, v in t.items()}, t["labels"][:, task_index].numpy()[mask]

    rows, y = labelled(train)
    x, scale = design_matrix(rows, num_buckets)
    val_rows, val_y = labelled(val)
    x_val = design_matrix(val_rows, num_buckets, scale)[0]
    best = None
    for c in grid:
        model = LogisticRegression(C=c, max_iter=300, random_state=seed).fit(x, y)
        loss = log_loss(val_y, model.predict_proba(x_val)[:, 1], labels=[0, 1])
        if best is None or loss < best[0]:
            best = (loss, c, model)
    _, c, model = best
    out = []
    for tensors in evaluate:
        rows_e, _ = labelled(tensors)
        out.append(model.predict_proba(design_matrix(rows_e, num_buckets, scale)[0])[:, 1])
    return out, c
