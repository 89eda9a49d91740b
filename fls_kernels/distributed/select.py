"""Global k-smallest selection over scores sharded across ranks: no rank ever holds all scores.

Scores become order-preserving 64-bit integer keys; four rounds of 16-bit digits find the k-th smallest key T
from histograms summed over ranks (one all-reduce of 2¹⁶ counts per round), then one all-reduce of per-layer
counts of keys equal to T hands the remaining ties out in (layer, flat index) order — exactly the rule of
``fls_kernels.ops.select_smallest`` on the concatenation of every layer's scores.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.distributed as dist
from torch import Tensor

from fls_kernels.distributed.comm import Comm

_DIGIT_BITS = 16
_BINS = 1 << _DIGIT_BITS
_FLIP = (1 << 63) - 1  # the 63 value bits of a negative float, reversed so keys sort like the floats


def order_keys(scores: Tensor) -> Tensor:
    """int64 keys with key(a) < key(b) ⇔ a < b for non-NaN floats (−0.0 and +0.0 equal)."""
    bits = (scores.reshape(-1).to(torch.float64) + 0.0).view(torch.int64)
    return torch.where(bits < 0, bits ^ _FLIP, bits)


def select_smallest(scores: Sequence[Tensor | None], k: int, comm: Comm) -> list[Tensor | None]:
    """Masks of the ``k`` smallest scores over every rank's layers; ties by (layer index, flat index).

    Args:
        scores: one entry per layer, in the same global layer order on every rank: this rank's scores for the
            layers it owns, None for the others (every layer is owned by exactly one rank).
        k: how many to select in total (the same on every rank).
        comm: the process group.

    Returns:
        bool masks for the owned layers (None elsewhere).

    Raises:
        RankFailure: NaN scores or ``k`` above the number of selectable (< +inf) scores, on any rank.
    """
    owned = [i for i, s in enumerate(scores) if s is not None]
    keys = {i: order_keys(scores[i]) for i in owned}
    inf_key = int(order_keys(torch.tensor([float("inf")]))[0])
    with comm.attempt():
        for i in owned:
            if bool(torch.isnan(scores[i]).any()):
                raise ValueError(f"scores[{i}]: contains NaN")
    available = comm.check(torch.tensor([float(sum(int((keys[i] < inf_key).sum()) for i in owned))]))
    if not 0 <= k <= int(available[0]):
        raise ValueError(f"k={k} but only {int(available[0])} scores are selectable (below +inf)")
    out: list[Tensor | None] = [None] * len(scores)
    if k == 0:
        for i in owned:
            out[i] = torch.zeros_like(scores[i], dtype=torch.bool)
        return out
    device = comm.device
    prefix, need = None, k  # prefix: the signed value of the key bits fixed so far
    for shift in range(64 - _DIGIT_BITS, -1, -_DIGIT_BITS):
        hist = torch.zeros(_BINS, dtype=torch.int64, device=device)
        for i in owned:
            key = keys[i]
            if prefix is not None:
                key = key[(key >> (shift + _DIGIT_BITS)) == prefix]
            digit = (key >> shift) + (_BINS // 2) if prefix is None else (key >> shift) & (_BINS - 1)
            hist += torch.bincount(digit.to(device), minlength=_BINS)
        dist.all_reduce(hist, group=comm.group)
        cum = hist.cumsum(0)
        d = int(torch.searchsorted(cum, torch.tensor([need], device=device)).item())
        need -= int(cum[d - 1]) if d > 0 else 0
        prefix = d - _BINS // 2 if prefix is None else (prefix << _DIGIT_BITS) | d
    threshold = prefix
    ties = torch.zeros(len(scores), dtype=torch.int64, device=device)
    for i in owned:
        ties[i] = int((keys[i] == threshold).sum())
    dist.all_reduce(ties, group=comm.group)
    before = torch.cumsum(ties, 0) - ties
    for i in owned:
        take = min(max(need - int(before[i]), 0), int(ties[i]))
        chosen = keys[i] < threshold
        if take:
            where = torch.nonzero(keys[i] == threshold).reshape(-1)[:take]
            chosen[where] = True
        out[i] = chosen.reshape(scores[i].shape)
    return out
