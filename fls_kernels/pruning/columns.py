"""Column-by-column OBS elimination of a layer whose rows share one inverse curvature C = Uᵀ U (U upper
triangular): SparseGPT's solver, also used by the Kronecker methods' ``update="columns"`` with C = Q's input factor.

    column j:  q_j = w_j with its removed rows zeroed,  e = (w_j − q_j) / U_jj,  W[:, j:] −= e U[j, j:]

which is exact OBS, row by row, on ½ δᵀ C_S⁻¹ δ over the columns S = {j, …} not yet visited (earlier columns stay
as they are). Updates beyond a block of B columns are applied once per block: W[:, j₂:] −= E U[j₁:j₂, j₂:].
Weights chosen on the way are the smallest OBS losses w_ij² / (r_i U_jj²) of the block (r_i: a row's share of the
inverse curvature, 1 when rows are alike) — the saliency with the inverse recomputed after every column.
"""

from __future__ import annotations

import torch
from torch import Tensor

from fls_kernels.pruning.targets import Budget


def shares(total: int, sizes: list[int]) -> list[int]:
    """Split ``total`` over parts of ``sizes`` in proportion (cumulative rounding up; each share ≤ its size when
    total ≤ Σ sizes)."""
    whole, out, before, done = sum(sizes), [], 0, 0
    for size in sizes:
        done += size
        upto = -((-total * done) // whole) if whole else 0  # ⌈total · done / whole⌉
        out.append(upto - before)
        before = upto
    return out


def eliminate_columns_(
    W: Tensor,
    U: Tensor,
    alive: Tensor,
    n_weight: int,
    budget: Budget | None,
    m: int | None = None,
    blocksize: int = 128,
    prune: Tensor | None = None,
    row_scale: Tensor | None = None,
) -> Tensor:
    """Eliminate one row group's pruned weights in place: W [r, n], U [n, n] (Uᵀ U = the rows' shared inverse
    curvature), alive [r, n]. The weights removed are ``prune`` ([r, n], fixed in advance) or chosen on the way:
    ``budget.new`` more (unstructured, shared between column blocks by their alive weights) or ``budget.zeros``
    zeros per group of ``m`` inputs (N:M); ``row_scale`` [r] weighs the rows' unstructured scores (None: all 1).
    Returns the new alive mask; removed weights are exactly 0."""
    n = W.shape[1]
    pruned = ~alive if prune is None else (~alive | prune)
    pruned[:, n_weight:] = False  # the bias column is never pruned
    if prune is not None:
        budget = Budget()  # nothing left to choose
    starts = list(range(0, n, blocksize))
    if budget.new is not None:
        block_new = shares(budget.new, [int(alive[:, s : min(s + blocksize, n_weight)].sum()) for s in starts])
    d = U.diagonal()
    rows = torch.ones(W.shape[0], 1, dtype=W.dtype, device=W.device) if row_scale is None else row_scale[:, None]
    for b, j1 in enumerate(starts):
        j2, end = min(j1 + blocksize, n), max(min(j1 + blocksize, n_weight) - j1, 0)
        W1, U1 = W[:, j1:j2].clone(), U[j1:j2, j1:j2]
        E = torch.zeros_like(W1)
        if budget.new is not None and block_new[b]:
            score = (W1[:, :end] ** 2 / (rows * d[j1 : j1 + end] ** 2)).masked_fill(
                pruned[:, j1 : j1 + end], float("inf")
            )
            pick = torch.zeros(score.numel(), dtype=torch.bool, device=W.device)
            pick[score.flatten().topk(block_new[b], largest=False).indices] = True
            pruned[:, j1 : j1 + end] |= pick.reshape(score.shape)
        for j in range(j2 - j1):
            col = j1 + j
            if budget.zeros is not None and col < n_weight and col % m == 0:
                score = W1[:, j : j + m] ** 2 / d[col : col + m] ** 2
                score = score.masked_fill(pruned[:, col : col + m], float("-inf"))
                group = torch.zeros_like(score, dtype=torch.bool)
                group.scatter_(1, score.topk(budget.zeros, dim=1, largest=False).indices, True)
                pruned[:, col : col + m] |= group
            w = W1[:, j]
            err = torch.where(pruned[:, col], w, torch.zeros_like(w)) / U1[j, j]
            W1[:, j:] -= err[:, None] * U1[j, j:][None, :]
            W1[:, j].masked_fill_(pruned[:, col], 0)
            E[:, j] = err
        W[:, j1:j2] = W1
        W[:, j2:] -= E @ U[j1:j2, j2:]
    keep = alive & ~pruned
    W.masked_fill_(~keep, 0)
    return keep
