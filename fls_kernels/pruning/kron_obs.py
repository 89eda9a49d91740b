"""OBS with a Kronecker-factored inverse Fisher block per layer: the shared machinery of FLS and K-FAC-OBS.

score ρ_q = θ_q² / (2 Q_qq);   update θ ← M_new ⊙ (θ − Q z),  z = M_P ⊙ θ ⊘ diag(Q)
exact block score ½ θ_Pᵀ (Q_PP)⁻¹ θ_P and update z_P = (Q_PP)⁻¹ θ_P (``block_score="exact"``)
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from fls_kernels import ops
from fls_kernels.curvature.blocks import KronBlock, RemoteBlock
from fls_kernels.curvature.layers import SUPPORTED_LAYERS, find_layers
from fls_kernels.ops import PRECISIONS
from fls_kernels.pruning.curvature import CurvaturePruner

BLOCK_SCORES = ("sum", "exact")


def local_blocks(pruner: KronOBSPruner) -> list[tuple[int, KronBlock]]:
    """(index, block) of the layers whose λ this rank holds."""
    return [(i, b) for i, b in enumerate(pruner.blocks) if isinstance(b, KronBlock)]


class KronOBSPruner(CurvaturePruner):
    """Scores and updates from per-layer :class:`KronBlock` s; subclasses decide how λ is obtained.

    With ``distributed="sharded"`` each rank holds the blocks of the layers it owns (a :class:`RemoteBlock`
    stands in for the others), so λ and its optimizer state are split over ranks.

    Args:
        precision: GEMM mode of the Q products on GPUs: "fp32" | "tf32" | "bf16".
        block_score: for block patterns, "sum" of the weights' ρ (default) or "exact" group OBS
            (½ θ_Pᵀ (Q_PP)⁻¹ θ_P, with the matching group update; for small blocks).
        **kwargs: :class:`CurvaturePruner` arguments.
    """

    SHARDABLE = True

    def __init__(self, model: nn.Module, *args, precision: str = "fp32", block_score: str = "sum", **kwargs) -> None:
        if precision not in PRECISIONS:
            raise ValueError(f"precision: expected one of {PRECISIONS}, got {precision!r}")
        if block_score not in BLOCK_SCORES:
            raise ValueError(f"block_score: expected one of {BLOCK_SCORES}, got {block_score!r}")
        super().__init__(model, *args, **kwargs)
        self.precision = precision
        self.block_score = block_score
        dtype = self._work_dtype()
        self.blocks = nn.ModuleList(
            KronBlock(v.m, v.n, dtype=dtype, device=self.device)
            if self.owns(i)
            else RemoteBlock(v.m, v.n, self.owners[i], dtype=dtype, device=self.device)
            for i, v in enumerate(self.views)
        )

    @property
    def _exact_blocks(self) -> bool:
        return self.block_score == "exact" and self.pattern.size > 1

    def _scores(self, index: int, W: Tensor, alive: Tensor) -> Tensor:
        block = self.blocks[index]
        with torch.no_grad():
            r, l = block.factor_diags()
            rho = ops.obs_scores(W, block.A.detach(), r, l, alive, backend=self._backend("obs_scores"))
        return rho[:, : self.views[index].n_weight].contiguous()

    def _group_solve(self, index: int, W: Tensor) -> tuple[Tensor, Tensor]:
        """Per block P of the pattern: (½ θ_Pᵀ λ_P, λ_P) with λ_P = (Q_PP)⁻¹ θ_P; shapes [bm, bn], [bm, bn, R·C].

        Q_PP = (a_P a_Pᵀ) ⊙ (G_R[I, I] ⊗ G_L[J, J]) for rows I and columns J of the block.
        """
        R, C = self.pattern.rows, self.pattern.cols
        view, block = self.views[index], self.blocks[index]
        G_R, G_L = block.grams()
        bm, bn = view.m // R, view.n_weight // C
        gr = G_R.reshape(bm, R, bm, R).diagonal(dim1=0, dim2=2).permute(2, 0, 1)  # [bm, R, R]
        gl = G_L[: view.n_weight, : view.n_weight].reshape(bn, C, bn, C).diagonal(dim1=0, dim2=2).permute(2, 0, 1)
        a = block.A.detach()[:, : view.n_weight].reshape(bm, R, bn, C).permute(0, 2, 1, 3).reshape(bm, bn, R * C)
        theta = W[:, : view.n_weight].reshape(bm, R, bn, C).permute(0, 2, 1, 3).reshape(bm, bn, R * C)
        losses, lams = torch.empty(bm, bn, dtype=W.dtype, device=W.device), torch.empty_like(theta)
        for i in range(bm):  # one block-row at a time bounds memory at bn·(R·C)² entries
            kron = torch.einsum("ab,ndc->nacbd", gr[i], gl).reshape(bn, R * C, R * C)  # G_R ⊗ G_Lᵀ, as in Q
            Q_pp = a[i, :, :, None] * kron * a[i, :, None, :]
            lam = torch.linalg.solve(Q_pp, theta[i])
            lams[i] = lam
            losses[i] = 0.5 * (theta[i] * lam).sum(-1)
        return losses, lams

    def _unit_scores(self, index: int, W: Tensor, alive: Tensor, scores: Tensor) -> Tensor:
        if not self._exact_blocks:
            return super()._unit_scores(index, W, alive, scores)
        with torch.no_grad():
            losses, _ = self._group_solve(index, W)
        dead = self.pattern.reduce(scores).isinf()
        return losses.masked_fill(dead, float("inf"))

    def _update(self, index: int, W: Tensor, prune: Tensor, keep: Tensor) -> None:
        block = self.blocks[index]
        with torch.no_grad():
            G_R, G_L = block.grams()
            if self._exact_blocks:
                view = self.views[index]
                R, C = self.pattern.rows, self.pattern.cols
                _, lams = self._group_solve(index, W)
                bm, bn = view.m // R, view.n_weight // C
                Z = torch.zeros_like(W)
                Z[:, : view.n_weight] = lams.reshape(bm, bn, R, C).permute(0, 2, 1, 3).reshape(view.m, view.n_weight)
                Z.masked_fill_(~prune, 0)
                W.sub_(
                    ops.kron_qv(
                        Z, block.A.detach(), G_R, G_L, precision=self.precision, backend=self._backend("kron_qv")
                    )
                )
                W.masked_fill_(~keep, 0)
            else:
                r, l = block.factor_diags()
                ops.surgeon_update_(
                    W,
                    block.A.detach(),
                    G_R,
                    G_L,
                    r,
                    l,
                    prune,
                    keep,
                    precision=self.precision,
                    backend=self._backend("surgeon_update_"),
                )

    def _memory(self) -> dict[str, int]:
        return {"lambda": sum(p.numel() * p.element_size() for p in self.blocks.parameters())}

    @staticmethod
    def estimate_memory(
        model: nn.Module,
        *,
        layer_types=SUPPORTED_LAYERS,
        include: str | None = None,
        ignore=(),
        include_bias: bool = True,
        bytes_per_value: int = 4,
        optimizer: bool = True,
    ) -> dict[str, int]:
        """Dry run, nothing allocated: bytes of λ = (R, L, A) (m² + n² + mn per layer), Adam's two moments when
        ``optimizer``, and the masks, for the layers these selection arguments pick."""
        views = find_layers(
            model, layer_types=tuple(layer_types), include=include, ignore=tuple(ignore), include_bias=include_bias
        )
        lam = sum(v.m * v.m + v.n * v.n + v.m * v.n for v in views) * bytes_per_value
        usage = {"lambda": lam, "masks": sum(v.m * v.n_weight for v in views)}
        if optimizer:  # Adam: two moments per value and a scalar step per tensor (R, L, A)
            usage["optimizer"] = 2 * lam + 3 * len(views) * 4
        usage["total"] = sum(usage.values())
        return usage
