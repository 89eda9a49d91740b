"""Column-by-column OBS elimination of a layer whose rows share one inverse curvature C = Uᵀ U (U upper
triangular): SparseGPT's solver, also used by the Kronecker methods' ``update="columns"`` with C = Q's input factor.

    column j:  q_j = w_j with its removed rows zeroed,  e = (w_j − q_j) / U_jj,  W[:, j:] −= e U[j, j:]

which is exact OBS, row by row, on ½ δᵀ C_S⁻¹ δ over the columns S = {j, …} not yet visited (earlier columns stay
as they are). Updates beyond a block of B columns are applied once per block: W[:, j₂:] −= E U[j₁:j₂, j₂:].
Weights chosen on the way are the smallest OBS losses w_ij² / (r_i U_jj²) of the block (r_i: a row's share of the
inverse curvature, 1 when rows are alike) — the saliency with the inverse recomputed after every column.

N:M, at a group's first column j, ``nm_select="greedy"`` (SparseGPT's) removes the M − N weights with the
smallest single-weight losses w_ij² / U_jj²; ``nm_select="exact"`` removes the set P of the group whose elimination
loses least,

    ½ ‖e_P‖²,   U_PPᵀ e_P = w_P   (U_PP: U's rows and columns P, upper triangular),

the loss the elimination above incurs for P, each removed weight's error taken after the earlier removals'
updates (the greedy score is its first term alone, ignoring the weights' interaction).
"""

from __future__ import annotations

from itertools import combinations

import torch
from torch import Tensor

from fls_kernels.pruning.patterns import NMPattern
from fls_kernels.pruning.targets import Budget

NM_SELECT = ("greedy", "exact")


def check_nm_select(nm_select: str, pattern: object) -> None:
    """ValueError unless ``nm_select`` is "greedy" or ``pattern`` is N:M (the other choices pick N:M groups)."""
    if nm_select != "greedy" and not isinstance(pattern, NMPattern):
        raise ValueError(f"nm_select: {nm_select!r} chooses N:M groups, the pattern is {pattern}")


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
    nm_select: str = "greedy",
) -> Tensor:
    """Eliminate one row group's pruned weights in place: W [r, n], U [n, n] (Uᵀ U = the rows' shared inverse
    curvature), alive [r, n]. The weights removed are ``prune`` ([r, n], fixed in advance) or chosen on the way:
    ``budget.new`` more (unstructured, shared between column blocks by their alive weights) or ``budget.zeros``
    zeros per group of ``m`` inputs (N:M, chosen by ``nm_select``: "greedy" | "exact", see the module docstring);
    ``row_scale`` [r] weighs the rows' unstructured scores (None: all 1). A block holds whole groups of ``m``.
    Returns the new alive mask; removed weights are exactly 0."""
    if nm_select not in NM_SELECT:
        raise ValueError(f"nm_select: expected one of {NM_SELECT}, got {nm_select!r}")
    n = W.shape[1]
    if m is not None:
        blocksize = max(m, blocksize // m * m)
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
                if nm_select == "exact":
                    group = exact_group(W1[:, j : j + m], U1[j : j + m, j : j + m], pruned[:, col : col + m], budget)
                else:
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


def exact_group(w: Tensor, U_G: Tensor, dead: Tensor, budget: Budget) -> Tensor:
    """Per row, the ``budget.zeros`` weights of one N:M group (w [r, m]; U_G [m, m], the group's block of U) whose
    column-by-column elimination loses least, ½ ‖e_P‖² with U_PPᵀ e_P = w_P, among the sets that hold the row's
    ``dead`` weights (a row with more dead weights than that keeps just them); a bool mask [r, m]. The
    m-choose-zeros candidate sets are solved in float64."""
    m, zeros = w.shape[1], budget.zeros
    if zeros == 0:
        return torch.zeros_like(dead)
    sets = torch.tensor(list(combinations(range(m), zeros)), dtype=torch.long, device=w.device)  # [K, z], ascending
    U_P = U_G.to(torch.float64)[sets[:, :, None], sets[:, None, :]]  # [K, z, z], upper triangular
    w_P = w.to(torch.float64)[:, sets].permute(1, 2, 0)  # [K, z, r]
    e_P = torch.linalg.solve_triangular(U_P.mT, w_P, upper=False)
    loss = 0.5 * e_P.square().sum(1).mT  # [r, K]
    member = torch.zeros(len(sets), m, dtype=torch.bool, device=w.device)
    member.scatter_(1, sets, True)
    outside = (dead[:, None, :] & ~member[None]).any(-1)  # a dead weight left out of the set
    loss = loss.masked_fill(outside, float("inf"))
    best = loss.argmin(1)
    return torch.where(loss[torch.arange(len(best)), best].isinf()[:, None], dead, member[best])
