"""Explicit-matrix forms that verify the reference: Q as a dense (mn × mn) matrix and exact OBS.

Weights are vectorised row-major: entry (i, j) of an m × n matrix is index i·n + j.
"""

from __future__ import annotations

import torch


def kron_matrix(A: torch.Tensor, G_R: torch.Tensor, G_L: torch.Tensor) -> torch.Tensor:
    """Q = D_A (G_R ⊗ G_Lᵀ) D_A as an [mn, mn] matrix, so that Q @ vec(V) = vec(A ⊙ (G_R (A ⊙ V) G_L))."""
    a = A.reshape(-1)
    return a[:, None] * torch.kron(G_R, G_L.T.contiguous()) * a[None, :]


def obs_single(theta: torch.Tensor, Q: torch.Tensor, q: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Exact single-weight OBS with inverse curvature Q: (ρ_q, δθ) = (θ_q²/(2Q_qq), −(θ_q/Q_qq) Q e_q).

    Args:
        theta: [d] flat weights; Q: [d, d]; q: index removed.
    """
    return theta[q] ** 2 / (2 * Q[q, q]), -(theta[q] / Q[q, q]) * Q[:, q]


def obs_exact_set(theta: torch.Tensor, F: torch.Tensor, removed: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Exact joint OBS of a set P under curvature F: δθ = −F⁻¹ E (Eᵀ F⁻¹ E)⁻¹ Eᵀ θ, loss ½ θ_Pᵀ (F⁻¹_PP)⁻¹ θ_P.

    Args:
        theta: [d]; F: [d, d] positive definite; removed: [d] bool.
    """
    Finv = torch.linalg.inv(F)
    idx = removed.nonzero().squeeze(1)
    block = Finv[idx][:, idx]
    lam = torch.linalg.solve(block, theta[idx])
    return 0.5 * theta[idx] @ lam, -Finv[:, idx] @ lam
