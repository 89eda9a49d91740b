"""Selection of the weights to prune: exact global k-smallest and N:M groups."""

from __future__ import annotations

from collections.abc import Sequence

import torch


def select_smallest(scores: Sequence[torch.Tensor], k: int) -> list[torch.Tensor]:
    """Masks with exactly ``k`` True over all tensors: the k smallest scores of their concatenation.

    Ties are broken by (tensor index, flat index): earlier wins. +inf scores are never selected.

    Args:
        scores: tensors of any shapes, one device, one floating dtype.
        k: how many to select, 0 ≤ k ≤ number of finite-or-−inf scores.

    Returns:
        one bool tensor per input, of its shape.

    Raises:
        ValueError: NaN in ``scores`` or fewer than ``k`` selectable scores.
    """
    flat = torch.cat([s.reshape(-1) for s in scores])
    if torch.isnan(flat).any():
        raise ValueError("scores contain NaN")
    available = int((flat < float("inf")).sum())
    if not 0 <= k <= available:
        raise ValueError(f"k={k} but only {available} scores are selectable (below +inf)")
    # A stable sort orders equal scores by position in the concatenation = (tensor index, flat index).
    order = torch.sort(flat, stable=True).indices[:k]
    chosen = torch.zeros_like(flat, dtype=torch.bool)
    chosen[order] = True
    parts = torch.split(chosen, [s.numel() for s in scores])
    return [part.reshape(s.shape).clone() for part, s in zip(parts, scores)]  # one storage per output


def select_nm(scores: torch.Tensor, n: int, m: int) -> torch.Tensor:
    """In every group of ``m`` consecutive entries of each row, mark the ``n`` smallest scores.

    Ties go to the lower column. Args: scores: [rows, cols] with cols % m == 0; 0 ≤ n ≤ m.

    Returns:
        [rows, cols] bool, exactly n True per group.
    """
    rows, cols = scores.shape
    groups = scores.reshape(rows, cols // m, m)
    order = torch.sort(groups, dim=-1, stable=True).indices[..., :n]
    chosen = torch.zeros_like(groups, dtype=torch.bool)
    chosen.scatter_(-1, order, True)
    return chosen.reshape(rows, cols)
