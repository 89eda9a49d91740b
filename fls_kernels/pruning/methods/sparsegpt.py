"""SparseGPT (Frantar & Alistarh, 2023): per layer, OBS on the output reconstruction loss ‖W X − Ŵ X‖², columns
eliminated in order with the Cholesky factor of H⁻¹ and the mask chosen adaptively per block of columns.

    H = (2/N) Σ a aᵀ + δ I,   δ = dampening · mean diag H,   H⁻¹ = Uᵀ U (U upper triangular)
    column j:  q_j = w_j with its pruned rows zeroed,  e = (w_j − q_j) / U_jj,  W[:, j:] −= e U[j, j:]
    mask of a block of B columns: the smallest w² / U_jj² (unstructured); N:M: per group of M, at its first column

The update of the columns after a block is applied lazily, once per block (W[:, j₂:] −= E U[j₁:j₂, j₂:]). Rows share
H and are independent. Layers are pruned in model order, each measured on the inputs of the model pruned so far
(:mod:`.layerwise`). A folded bias is the last column, which is never pruned and so absorbs part of the error.
"""

from __future__ import annotations

import torch
from torch import Tensor

from fls_kernels.pruning.checks import choice, integer, positive
from fls_kernels.pruning.columns import NM_SELECT, check_nm_select, eliminate_columns_, shares
from fls_kernels.pruning.context import Context
from fls_kernels.pruning.methods.layerwise import Layerwise
from fls_kernels.pruning.patterns import NMPattern
from fls_kernels.pruning.pruner import Pruner
from fls_kernels.pruning.targets import Budget


def inverse_factor(H: Tensor, dampening: float, name: str) -> Tensor:
    """U, upper triangular with Uᵀ U = (H + δ I)⁻¹, δ = dampening · mean diag H (zero-input columns get H_jj = 1).

    With J the reversal of the indices and J H J = L Lᵀ (Cholesky), H⁻¹ = (J L⁻ᵀ J)(J L⁻¹ J), so U = J L⁻¹ J: one
    factorisation and one triangular inverse, without forming H⁻¹."""
    H = H.clone()
    dead = H.diagonal() == 0
    H.diagonal()[dead] = 1
    H.diagonal().add_(dampening * H.diagonal().mean())
    L, info = torch.linalg.cholesky_ex(H.flip(0, 1))
    if info:
        raise ValueError(f"dampening: H + δI of layer {name!r} is not positive definite; increase dampening")
    eye = torch.eye(H.shape[0], dtype=H.dtype, device=H.device)
    return torch.linalg.solve_triangular(L, eye, upper=False).flip(0, 1)


class SparseGPT(Layerwise):
    """Per-layer OBS reconstruction with lazy column blocks (see the module docstring).

    Args:
        dampening: δ as a fraction of mean diag H (the paper's 1%).
        blocksize: B, columns per lazy update and per adaptive mask selection (the paper's 128).
        nm_select: N:M, how each group's zeros are chosen: "greedy" (the paper's: the smallest w² / U_jj²) or
            "exact" (the set whose elimination loses least: :mod:`fls_kernels.pruning.columns`).
        **kwargs: ``calib_batches``, ``inputs``, ``true_sequential``
            (:class:`~fls_kernels.pruning.methods.layerwise.Layerwise`).
    """

    name = "sparsegpt"
    quick_options = {"blocksize": 16}

    def __init__(self, *, dampening: float = 0.01, blocksize: int = 128, nm_select: str = "greedy", **kwargs) -> None:
        self.dampening = positive("dampening", dampening)
        self.blocksize = integer("blocksize", blocksize, 1)
        self.nm_select = choice("nm_select", nm_select, NM_SELECT)
        super().__init__(**kwargs)

    def bind(self, ctx: Context) -> None:
        check_nm_select(self.nm_select, ctx.pattern)
        super().bind(ctx)

    def prune_layer(self, index: int, W: Tensor, alive: Tensor, budget: Budget) -> Tensor:
        view, pattern = self.ctx.views[index], self.ctx.pattern
        m = pattern.m if isinstance(pattern, NMPattern) else None
        moments = self.moments(index, diagonal=False)
        H = 2 * moments.total / max(moments.samples, 1)  # [g, n, n]
        g = H.shape[0]
        size = view.m // g
        news = shares(budget.new, [int(alive[r * size : (r + 1) * size].sum()) for r in range(g)]) if m is None else []
        keep = torch.empty_like(alive)
        for r in range(g):
            U = inverse_factor(H[r], self.dampening, view.name).to(W.dtype)
            part = slice(r * size, (r + 1) * size)
            share = Budget(new=news[r]) if m is None else budget
            keep[part] = eliminate_columns_(
                W[part], U, alive[part].clone(), view.n_weight, share, m, self.blocksize, nm_select=self.nm_select
            )
        return keep


class SparseGPTPruner(Pruner):
    """SparseGPT: layer-by-layer OBS reconstruction of each layer's outputs on calibration data, pruned in model
    order with the inputs of the already-pruned model; unstructured or N:M, each layer to the same sparsity
    (``allocation="uniform"``, the default here) or to a per-layer dict. ``fit(loader)`` holds the calibration
    batches; ``prune`` measures and solves.

    Args: ``dampening``, ``blocksize``, ``nm_select``, ``calib_batches``, ``inputs``, ``true_sequential`` and the
    :class:`~fls_kernels.pruning.pruner.Pruner` arguments.

    Example:
        >>> pruner = SparseGPTPruner(model, include=r".*encoder.*")
        >>> pruner.fit(calib_batches)
        >>> pruner.prune(0.5)
    """

    method_class = SparseGPT
