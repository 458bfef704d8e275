"""The self-supervised loss between user and Pin tower outputs (paper section 3.1).

For each positive pair (u_i, p_i) (a row whose primary label is 1), with in-batch negatives
N_i^- (the Pins of the other rows, less the masked ones below):

    L_i = -log( e^{s_ii} / (e^{s_ii} + sum_{j in N_i^-} e^{s_ij}) ),
    s_ij = u_i . p_j / tau - log Q(p_j)

Q(p) is the estimated probability that Pin p appears in a batch (StreamingFrequencyEstimator):
subtracting log Q stops popular Pins, which are over-represented as in-batch negatives, from
being pushed down just for being popular. tau is trainable (stored as log tau, clamped).

Masked out of N_i^- (they are not negatives of u_i, so pushing them down teaches the towers
something false):
    accidental hits     rows j != i showing the same Pin as row i (pin_j == pin_i);
    other positives     rows j != i that are positives of the same user (user_j == user_i
                        and j positive): a user who clicks several Pins in one batch.
"""

from __future__ import annotations

import torch
from torch import Tensor
from torch.nn import functional as F


def temperature(log_tau: Tensor, tau_min: float = 0.01, tau_max: float = 1.0) -> Tensor:
    """tau = exp(log_tau) clamped to [tau_min, tau_max] (no gradient while clamped)."""
    return log_tau.exp().clamp(tau_min, tau_max)


def sampled_softmax_loss(
    user: Tensor,
    pin: Tensor,
    pin_ids: Tensor,
    positive: Tensor,
    log_q: Tensor,
    log_tau: Tensor,
    tau_min: float = 0.01,
    tau_max: float = 1.0,
    user_ids: Tensor | None = None,
) -> tuple[Tensor, Tensor]:
    """The paper's logQ-corrected in-batch sampled softmax, averaged over positive rows.

        L = mean_{i positive} -log( e^{s_ii} / (e^{s_ii} + sum_{j in N_i^-} e^{s_ij}) )
        N_i^- = { j != i : pin_j != pin_i and not (user_j == user_i and j positive) }

    Args:
        user (Tensor): [B, D] user tower outputs.
        pin (Tensor): [B, D] Pin tower outputs.
        pin_ids (Tensor): [B] int64 Pin ids; a negative with the positive's id (an accidental
            hit: the same Pin shown in another row) is masked out.
        positive (Tensor): [B] bool, rows whose primary label is 1.
        log_q (Tensor): [B] log Q(p_j) of each row's Pin.
        log_tau (Tensor): scalar, the trainable log temperature.
        tau_min, tau_max (float): the clamp on tau = exp(log_tau).
        user_ids (Tensor | None): [B] int64 user ids; a candidate row that is another
            positive of the positive row's user is masked out. None skips this mask (every
            row is then taken to be a different user).

    Returns:
        tuple[Tensor, Tensor]: the loss (scalar) and the logits [P, B] of the P positive rows.
        Column 0 holds the positive's logit s_ii; columns 1..B-1 hold the other rows' Pins in
        batch order, -inf where masked (accidental hits, the user's other positives). With no
        positive row the loss is a zero that still depends on the inputs (backward works) and
        the logits are [0, B].
    """
    tau = temperature(log_tau, tau_min, tau_max)
    rows = positive.nonzero(as_tuple=True)[0]  # [P]
    n = pin.shape[0]
    if rows.numel() == 0:
        zero = (user.sum() + pin.sum() + log_tau.sum() + log_q.sum()) * 0.0
        return zero, user.new_zeros(0, n)
    scores = user[rows] @ pin.T / tau - log_q.unsqueeze(0)  # [P, B]; s_ij, j over the batch
    own = torch.zeros_like(scores, dtype=torch.bool)
    own[torch.arange(rows.numel(), device=rows.device), rows] = True
    hit = pin_ids[rows].unsqueeze(1) == pin_ids.unsqueeze(0)  # [P, B] accidental hits
    if user_ids is not None:
        hit |= (user_ids[rows].unsqueeze(1) == user_ids.unsqueeze(0)) & positive.unsqueeze(0)
    hit &= ~own
    scores = scores.masked_fill(hit, float("-inf"))
    # reorder each row to [positive, the other Pins in batch order]: target is column 0
    logits = torch.cat([scores[own].unsqueeze(1), scores[~own].view(rows.numel(), n - 1)], dim=1)
    target = torch.zeros(rows.numel(), dtype=torch.long, device=logits.device)
    return F.cross_entropy(logits, target), logits


def recall_at_k(logits: Tensor, k: int, reduction: str = "mean") -> Tensor:
    """SSL recall@k: whether the positive (column 0) ranks in the top k of its row.

    Args:
        logits (Tensor): [P, C] from `sampled_softmax_loss`.
        k (int): cut-off.
        reduction (str): "mean" gives a scalar (0.0 when P == 0); "none" gives the hits [P]
            (1.0 / 0.0), for a metric that weights batches by their number of positives.

    Returns:
        Tensor: scalar or [P]. Ties with the positive count against it: a row whose C
        logits are all equal ranks its positive last (hit only when k >= C).

    Raises:
        ValueError: on an unknown `reduction`.
    """
    rank = (logits[:, 1:] >= logits[:, :1]).sum(dim=1)  # other candidates at least as high
    hits = (rank < k).float()
    if reduction == "none":
        return hits
    if reduction != "mean":
        raise ValueError(f"reduction must be 'mean' or 'none', got {reduction!r}")
    return hits.mean() if hits.numel() else hits.new_zeros(())
