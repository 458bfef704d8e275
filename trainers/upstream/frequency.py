"""Streaming estimate of how often each Pin appears in a batch (Yi et al. 2019, section 4).

Hashed arrays, per hash function h:
    A[h(y)]  the last step at which item y was seen
    B[h(y)]  the estimated number of steps between two sightings of y (the gap)

On a sighting of y at step t:  B <- (1 - alpha) * B + alpha * (t - A);  A <- t.
The per-batch probability of y is Q(y) = 1 / B. Hash collisions shorten gaps, so with
several hash functions the largest gap (smallest Q) is taken.

The hash functions must be independent for that to help: row h uses
    h(y) = splitmix64(y + (h + 1) * GAMMA) mod num_buckets
(Steele et al. 2014's finalizer; GAMMA = 0x9E3779B97F4A7C15), computed in int64 torch ops
that wrap around as uint64 arithmetic would. An affine hash (a*y + b) mod 2^k with odd a
would not do: two ids collide under it exactly when y1 = y2 mod 2^k, whatever a and b,
so every row collided on the same pairs and the extra rows bought nothing.

Both arrays are registered buffers: they save in the checkpoint and carry over to the next
day's incremental training (paper B.2).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

GAMMA = 0x9E3779B97F4A7C15  # splitmix64's increment (odd; 2^64 / golden ratio)
_MIX1 = 0xBF58476D1CE4E5B9
_MIX2 = 0x94D049BB133111EB


def _to_int64(x: int) -> int:
    """The int64 with the same low 64 bits as the Python int `x` (two's complement)."""
    x &= (1 << 64) - 1
    return x - (1 << 64) if x >= 1 << 63 else x


def _shift_right(x: Tensor, bits: int) -> Tensor:
    """Logical (unsigned) right shift of int64 `x`: torch's >> is arithmetic on int64."""
    return (x >> bits) & ((1 << (64 - bits)) - 1)


def splitmix64(x: Tensor) -> Tensor:
    """splitmix64's finalizer of int64 `x` (any shape), as uint64 bits in an int64 tensor:

        z ^= z >> 30;  z *= 0xBF58476D1CE4E5B9;  z ^= z >> 27;  z *= 0x94D049BB133111EB;
        z ^= z >> 31

    (unsigned shifts, products mod 2^64: int64 multiplication wraps in two's complement).
    A bijection of 64-bit words that flips about half the output bits per input bit flip.
    Source: Steele, Lea, Flood, "Fast splittable pseudorandom number generators", 2014.
    """
    z = x.long()
    z = (z ^ _shift_right(z, 30)) * _to_int64(_MIX1)
    z = (z ^ _shift_right(z, 27)) * _to_int64(_MIX2)
    return z ^ _shift_right(z, 31)


class StreamingFrequencyEstimator(nn.Module):
    """Yi et al.'s streaming frequency estimator over int64 ids.

    Args:
        num_buckets (int): size of each hashed array.
        alpha (float): learning rate of the gap's moving average.
        num_hashes (int): independent hash functions (arrays), 1..MAX_HASHES.

    Raises:
        ValueError: num_hashes or num_buckets out of range.

    Buffers:
        last_step (LongTensor): [num_hashes, num_buckets], A; -1 where never seen.
        gap (Tensor): [num_hashes, num_buckets], B (float32).
        clock (LongTensor): scalar, the last step used; time only moves forward.
    """

    MAX_HASHES = 8

    def __init__(self, num_buckets: int = 2**16, alpha: float = 0.05, num_hashes: int = 2) -> None:
        super().__init__()
        if not 1 <= num_hashes <= self.MAX_HASHES:
            raise ValueError(f"num_hashes must be in 1..{self.MAX_HASHES}, got {num_hashes}")
        if num_buckets < 1:
            raise ValueError(f"num_buckets must be >= 1, got {num_buckets}")
        self.num_buckets = num_buckets
        self.alpha = alpha
        # not persistent: the seeds are code, so the state dict keeps its old layout
        seeds = [_to_int64((h + 1) * GAMMA) for h in range(num_hashes)]
        self.register_buffer("seed", torch.tensor(seeds, dtype=torch.long), False)
        self.register_buffer("last_step", torch.full((num_hashes, num_buckets), -1))
        self.register_buffer("gap", torch.zeros(num_hashes, num_buckets))
        self.register_buffer("clock", torch.tensor(-1))

    def _buckets(self, ids: Tensor) -> Tensor:
        """[num_hashes, B] bucket of each id under each hash function (module docstring)."""
        ids = ids.to(self.seed.device).long().view(1, -1)
        return torch.remainder(splitmix64(ids + self.seed[:, None]), self.num_buckets)

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
