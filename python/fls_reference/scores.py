"""Optimal-Brain-Surgeon importance scores under the Kronecker block."""

from __future__ import annotations

import torch

from fls_reference.kron import kron_diag


def obs_scores(W: torch.Tensor, A: torch.Tensor, r: torch.Tensor, l: torch.Tensor, mask: torch.Tensor):
    """ρ = W² / (2 · A² ⊙ (r lᵀ)), and +inf where ``mask`` is False (already pruned).

    Args:
        W: [m, n] weights; A: [m, n]; r: [m]; l: [n].
        mask: [m, n] bool, True where the weight is still alive.

    Returns:
        [m, n] scores; the smallest is the cheapest weight to remove.
    """
    rho = W * W / (2 * kron_diag(A, r, l))
    return torch.where(mask, rho, torch.full_like(rho, float("inf")))
