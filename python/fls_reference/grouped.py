"""Grouped forms: the per-layer ops applied to every layer of a list (what fast backends do in one launch)."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from fls_reference.kron import kron_qv
from fls_reference.surgeon import surgeon_update_


def kron_qv_grouped(
    Vs: Sequence[torch.Tensor],
    As: Sequence[torch.Tensor],
    G_Rs: Sequence[torch.Tensor],
    G_Ls: Sequence[torch.Tensor],
    *,
    precision: str = "fp32",
) -> list[torch.Tensor]:
    """[A_g ⊙ (G_R,g (A_g ⊙ V_g) G_L,g) for every layer g].

    Args:
        Vs, As: [m_g, n_g] per layer; G_Rs: [m_g, m_g]; G_Ls: [n_g, n_g].
        precision: GEMM mode of fast backends; the reference is exact in the input dtype.

    Returns:
        one new [m_g, n_g] tensor per layer.
    """
    return [kron_qv(V, A, G_R, G_L, precision=precision) for V, A, G_R, G_L in zip(Vs, As, G_Rs, G_Ls)]


def surgeon_update_grouped_(
    Ws: Sequence[torch.Tensor],
    As: Sequence[torch.Tensor],
    G_Rs: Sequence[torch.Tensor],
    G_Ls: Sequence[torch.Tensor],
    rs: Sequence[torch.Tensor],
    ls: Sequence[torch.Tensor],
    prunes: Sequence[torch.Tensor],
    keeps: Sequence[torch.Tensor],
    *,
    precision: str = "fp32",
) -> list[torch.Tensor]:
    """In place, for every layer g: W_g ← keep_g ⊙ (W_g − Q_g Z_g), Z_g = prune_g ⊙ W_g ⊘ diag(Q_g).

    Args:
        Ws: [m_g, n_g] weights, updated in place; As, G_Rs, G_Ls, rs, ls: the Q blocks; prunes, keeps: bool masks.
        precision: GEMM mode of fast backends; the reference is exact in the input dtype.

    Returns:
        Ws (as a list).
    """
    for layer in zip(Ws, As, G_Rs, G_Ls, rs, ls, prunes, keeps):
        surgeon_update_(*layer, precision=precision)
    return list(Ws)
