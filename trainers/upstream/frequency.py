"""Streaming estimate of how often each Pin appears in a batch (Yi et al. 2019, section 4).

Hashed arrays, per hash function h:
    A[h(y)]  the last step at which item y was seen
    B[h(y)]  the estimated number of steps between two sightings of y (the gap)

On a sighting of y at step t:  B <- (1 - alpha) * B + alpha * (t - A);  A <- t.
The per-batch probability of y is Q(y) = 1 / B. Hash collisions shorten gaps, so with
several hash functions the largest gap (smallest Q) is taken.

Both arrays are registered buffers: they save in the checkpoint and carry over to the next
day's incremental training (paper B.2).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn


class StreamingFrequencyEstimator(nn.Module):
    """Yi et al.'s streaming frequency estimator over int64 ids.

    Args:
        num_buckets (int): size of each hashed array.
        alpha (float): learning rate of the gap's moving average.
        num_hashes (int): independent hash functions (arrays).

    Buffers:
        last_step (LongTensor): [num_hashes, num_buckets], A; -1 where never seen.
        gap (Tensor): [num_hashes, num_buckets], B (float32).
        clock (LongTensor): scalar, the last step used; time only moves forward.
    """

    # odd multipliers and offsets of the hash functions (h(y) = (a*y + b) mod num_buckets)
    HASHES = ((0x9E3779B1, 0x7F4A7C15), (0x85EBCA77, 0x27D4EB2F), (0xC2B2AE3D, 0x165667B1))

    def __init__(self, num_buckets: int = 2**16, alpha: float = 0.05, num_hashes: int = 2) -> None:
        super().__init__()
        if not 1 <= num_hashes <= len(self.HASHES):
            raise ValueError(f"num_hashes must be in 1..{len(self.HASHES)}")
        self.num_buckets = num_buckets
        self.alpha = alpha
        self.register_buffer("mult", torch.tensor([a for a, _ in self.HASHES[:num_hashes]]), False)
        self.register_buffer(
            "offset", torch.tensor([b for _, b in self.HASHES[:num_hashes]]), False
        )
        self.register_buffer("last_step", torch.full((num_hashes, num_buckets), -1))
        self.register_buffer("gap", torch.zeros(num_hashes, num_buckets))
        self.register_buffer("clock", torch.tensor(-1))

    def _buckets(self, ids: Tensor) -> Tensor:
        """[num_hashes, B] bucket of each id under each hash function."""
        ids = ids.to(self.mult.device).long().view(1, -1)
        return torch.remainder(ids * self.mult[:, None] + self.offset[:, None], self.num_buckets)

    @torch.no_grad()
    def update(self, pin_ids: Tensor, step: int | Tensor | None = None) -> None:
        """Records that `pin_ids` [B] were seen at training step `step`.

        Time must move forward: a step not after the last one (a fresh Trainer restarts its
        global step at 0 on the next day; several updates in one step) is taken as last + 1.
        Ids repeated within one call count once (Q is a per-batch probability).
        """
        t = int(self.clock) + 1 if step is None else max(int(step), int(self.clock) + 1)
        buckets = self._buckets(pin_ids)  # [H, B]
        last = self.last_step.gather(1, buckets)
        old_gap = self.gap.gather(1, buckets)
        # first sighting: the only gap we know is the time since the start of the stream
        elapsed = torch.where(last >= 0, t - last, torch.full_like(last, t + 1)).float()
        new_gap = torch.where(last >= 0, (1 - self.alpha) * old_gap + self.alpha * elapsed, elapsed)
        self.gap.scatter_(1, buckets, new_gap)
        self.last_step.scatter_(1, buckets, torch.full_like(buckets, t))
        self.clock.fill_(t)

    @torch.no_grad()
    def log_q(self, pin_ids: Tensor) -> Tensor:
        """log Q(p) [B]: log of the estimated probability that each Pin appears in a batch.

        An id never seen counts as seen once over the whole stream so far (Q = 1 / steps).
        """
        buckets = self._buckets(pin_ids)
        gap = self.gap.gather(1, buckets)
        unseen = self.last_step.gather(1, buckets) < 0
        gap = torch.where(unseen, (self.clock + 1).clamp(min=1).float(), gap)
        return -gap.amax(dim=0).clamp(min=1.0).log()
