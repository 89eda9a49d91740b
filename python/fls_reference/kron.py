"""The Kronecker-factored inverse-Fisher block Q(λ) = D_A (G_R ⊗ G_L) D_A, applied and diagonalised."""

from __future__ import annotations

import torch


def kron_qv(V: torch.Tensor, A: torch.Tensor, G_R: torch.Tensor, G_L: torch.Tensor, *, precision: str = "fp32"):
    """Q(V) = A ⊙ (G_R · (A ⊙ V) · G_L).

    Args:
        V: [m, n] the matrix-shaped vector.
        A: [m, n] elementwise scaling of the block.
        G_R: [m, m] row Gram factor RᵀR.
        G_L: [n, n] column Gram factor LLᵀ.
        precision: GEMM mode of fast backends; the reference is exact in the input dtype.

    Returns:
        [m, n] a new tensor.
    """
    del precision
    return A * (G_R @ (A * V) @ G_L)


def kron_diag(A: torch.Tensor, r: torch.Tensor, l: torch.Tensor) -> torch.Tensor:
    """diag(Q) = A² ⊙ (r lᵀ), with r = diag(G_R) = ‖R[:, i]‖², l = diag(G_L) = ‖L[j, :]‖².

    Args:
        A: [m, n]; r: [m]; l: [n].

    Returns:
        [m, n] the diagonal of Q laid out like the weight matrix.
    """
    return A * A * torch.outer(r, l)
