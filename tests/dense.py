"""Explicit matrices of the curvature floor's objects, for tests (from the oracle's dense forms)."""

from __future__ import annotations

from torch import Tensor

from fls_kernels.curvature import KronBlock
from fls_reference.dense import kron_matrix


def q_matrix(block: KronBlock) -> Tensor:
    """A block's Q as an explicit [mn, mn] matrix (row-major vec): D_A (G_R ⊗ G_L) D_A."""
    return kron_matrix(block.A, *block.grams())
