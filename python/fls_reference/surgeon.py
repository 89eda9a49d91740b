"""The surgeon's compensating update for a set of removed weights (independent approximation)."""

from __future__ import annotations

import torch

from fls_reference.kron import kron_diag, kron_qv


def surgeon_update_(
    W: torch.Tensor,
    A: torch.Tensor,
    G_R: torch.Tensor,
    G_L: torch.Tensor,
    r: torch.Tensor,
    l: torch.Tensor,
    prune: torch.Tensor,
    keep: torch.Tensor,
    *,
    precision: str = "fp32",
) -> torch.Tensor:
    """In place: Z = prune ⊙ W ⊘ diag(Q);  W ← keep ⊙ (W − Q Z),  with Q Z = A ⊙ (G_R (A ⊙ Z) G_L).

    The sum over q ∈ prune of the single-weight OBS updates −(w_q / Q_qq) Q e_q, then the new mask.

    Args:
        W: [m, n] weights, updated in place.
        A, G_R, G_L, r, l: the Q block (r = diag G_R: [m], l = diag G_L: [n]).
        prune: [m, n] bool, the weights removed now.
        keep: [m, n] bool, the weights alive after the step (pruned entries become exactly 0).
        precision: GEMM mode of fast backends; the reference is exact in the input dtype.

    Returns:
        W.
    """
    Z = torch.where(prune, W / kron_diag(A, r, l), torch.zeros_like(W))
    W.copy_(torch.where(keep, W - kron_qv(Z, A, G_R, G_L, precision=precision), torch.zeros_like(W)))
    return W
