"""OBS with a Kronecker-factored inverse Fisher block per layer: the shared part of FLS and K-FAC-OBS.

score ρ_q = θ_q² / (2 Q_qq);   update θ ← M_new ⊙ (θ − Q z),  z = M_P ⊙ θ ⊘ diag(Q)      (``update="diagonal"``)
exact block score ½ θ_Pᵀ (Q_PP)⁻¹ θ_P and update z_P = (Q_PP)⁻¹ θ_P (``block_score="exact"``)
``update="columns"``: the removed set P eliminated column by column, each row by exact OBS with the rows' shared
input factor C = D_c G_L D_c, where A ≈ r cᵀ is A's best rank-one fit (exact for the K-FAC start A = 1) — the
interactions inside P that the diagonal update drops are kept, across rows G_R is taken as diagonal (it cancels
from a row's update).
``update="adaptive"``: the same elimination, but the selection only fixes how many weights each layer loses (and
the N:M pattern); which ones is decided block by block of columns on the way, by the OBS loss with the inverse
recomputed after every column, w_ij² / (r_i² G_R,ii U_jj²) with Uᵀ U = C (SparseGPT's adaptive mask, on Q's
factors).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from fls_kernels import ops
from fls_kernels.curvature.blocks import KronBlock, RemoteBlock
from fls_kernels.layers.blocks import find_blocks
from fls_kernels.layers.selection import select_layers
from fls_kernels.layers.views import SUPPORTED_LAYERS
from fls_kernels.ops import PRECISIONS
from fls_kernels.pruning.checks import choice
from fls_kernels.pruning.columns import NM_SELECT, check_nm_select, eliminate_columns_
from fls_kernels.pruning.context import Context
from fls_kernels.pruning.methods.fisher import FisherMethod
from fls_kernels.pruning.patterns import NMPattern
from fls_kernels.pruning.targets import Budget

BLOCK_SCORES = ("sum", "exact")
UPDATES = ("diagonal", "columns", "adaptive")


class KronOBS(FisherMethod):
    """Scores and updates from per-layer :class:`KronBlock` s; subclasses decide how λ is obtained.

    With ``distributed="sharded"`` each rank holds the blocks of the layers it owns (a :class:`RemoteBlock`
    stands in for the others), so λ and its optimizer state are split over ranks.

    Args:
        precision: GEMM mode of the Q products on GPUs: "fp32" | "tf32" | "bf16".
        block_score: for block patterns, "sum" of the weights' ρ (default) or "exact" group OBS
            (½ θ_Pᵀ (Q_PP)⁻¹ θ_P, with the matching group update; for small blocks).
        update: "diagonal" (−Q z with z = θ_P ⊘ diag(Q), the FishLeg Surgeon's) or "columns" (exact row-wise OBS
            of the removed set, eliminated column by column with Q's input factor) or "adaptive" (the same
            elimination choosing the removed weights of each layer on the way, as many as the selection; not for
            block patterns). See the module docstring.
        nm_select: with ``update="adaptive"`` and an N:M pattern, how each group's zeros are chosen: "greedy"
            (default; the smallest single-weight OBS losses, SparseGPT's) or "exact" (the set of the group whose
            column-by-column elimination loses least: :mod:`fls_kernels.pruning.columns`).
        *args, **kwargs: :class:`~fls_kernels.pruning.methods.fisher.FisherMethod` arguments.
    """

    shardable = True

    def __init__(
        self,
        *args,
        precision: str = "fp32",
        block_score: str = "sum",
        update: str = "diagonal",
        nm_select: str = "greedy",
        **kwargs,
    ) -> None:
        self.precision = choice("precision", precision, PRECISIONS)
        self.nm_select = choice("nm_select", nm_select, NM_SELECT)
        if nm_select != "greedy" and update != "adaptive":
            raise ValueError(f"nm_select: {nm_select!r} chooses N:M groups in update='adaptive', got update={update!r}")
        self.block_score = choice("block_score", block_score, BLOCK_SCORES)
        self.update_rule = choice("update", update, UPDATES)
        if update != "diagonal" and block_score == "exact":
            raise ValueError(f"update: {update!r} solves the removed set itself; use it with block_score='sum'")
        super().__init__(*args, **kwargs)

    def bind(self, ctx: Context) -> None:
        if self.update_rule == "adaptive" and not isinstance(ctx.pattern, NMPattern) and ctx.pattern.size != 1:
            raise ValueError(f"update: 'adaptive' chooses single weights or N:M groups, not {ctx.pattern} blocks")
        check_nm_select(self.nm_select, ctx.pattern)
        super().bind(ctx)
        owners, dtype = ctx.mode.owners, ctx.dtype
        self.blocks = nn.ModuleList(
            KronBlock(v.m, v.n, dtype=dtype, device=ctx.device)
            if ctx.mode.owns(i)
            else RemoteBlock(v.m, v.n, owners[i], dtype=dtype, device=ctx.device)
            for i, v in enumerate(ctx.views)
        )

    def local_blocks(self) -> list[tuple[int, KronBlock]]:
        """(index, block) of the layers whose λ this rank holds."""
        return [(i, b) for i, b in enumerate(self.blocks) if isinstance(b, KronBlock)]

    @property
    def _exact_blocks(self) -> bool:
        return self.block_score == "exact" and self.ctx.pattern.size > 1

    def scores(self, index: int, W: Tensor, alive: Tensor) -> Tensor:
        block = self.blocks[index]
        with torch.no_grad():
            r, l = block.factor_diags()
            rho = ops.obs_scores(W, block.A.detach(), r, l, alive, backend=self.ctx.backend_for("obs_scores"))
        return rho[:, : self.ctx.views[index].n_weight].contiguous()

    def _group_solve(self, index: int, W: Tensor) -> tuple[Tensor, Tensor]:
        """Per block P of the pattern: (½ θ_Pᵀ λ_P, λ_P) with λ_P = (Q_PP)⁻¹ θ_P; shapes [bm, bn], [bm, bn, R·C].

        Q_PP = (a_P a_Pᵀ) ⊙ (G_R[I, I] ⊗ G_L[J, J]) for rows I and columns J of the block.
        """
        R, C = self.ctx.pattern.rows, self.ctx.pattern.cols
        view, block = self.ctx.views[index], self.blocks[index]
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

    def unit_scores(self, index: int, W: Tensor, alive: Tensor, scores: Tensor) -> Tensor:
        if not self._exact_blocks:
            return super().unit_scores(index, W, alive, scores)
        with torch.no_grad():
            losses, _ = self._group_solve(index, W)
        dead = self.ctx.pattern.reduce(scores).isinf()
        return losses.masked_fill(dead, float("inf"))

    def update(self, index: int, W: Tensor, prune: Tensor, keep: Tensor) -> Tensor | None:
        block = self.blocks[index]
        with torch.no_grad():
            G_R, G_L = block.grams()
            if self._exact_blocks:
                self._update_exact(index, W, prune, keep, G_R, G_L)
                return None
            if self.update_rule != "diagonal":
                return self._update_columns(index, W, prune, keep, G_R)
            r, l = block.factor_diags()
            backend = self.ctx.backend_for("surgeon_update_")
            ops.surgeon_update_(
                W, block.A.detach(), G_R, G_L, r, l, prune, keep, precision=self.precision, backend=backend
            )

    def _update_columns(self, index: int, W: Tensor, prune: Tensor, keep: Tensor, G_R: Tensor) -> Tensor | None:
        """Row-wise exact OBS, column by column, with C = D_c G_L D_c (:mod:`..columns`), of ``prune`` or, adaptive,
        of as many weights (N:M: zeros per group) chosen on the way; returns the adaptive alive mask."""
        view, block = self.ctx.views[index], self.blocks[index]
        r, c, U = block.memo("columns", lambda: column_factors(block))
        if not bool(torch.isfinite(U).all()):
            raise ValueError(f"update: Q's input factor of layer {view.name!r} is not finite")
        U, alive = U.to(W.dtype), keep | prune
        if self.update_rule == "columns":
            eliminate_columns_(W, U, alive, view.n_weight, None, prune=prune)
            return None
        pattern, n = self.ctx.pattern, view.n_weight
        if isinstance(pattern, NMPattern):
            zeros = (~keep[:, :n]).reshape(view.m, n // pattern.m, pattern.m).sum(-1)
            budget, m = Budget(zeros=int(zeros.max())), pattern.m
            if not bool((zeros == zeros.max()).all()):
                raise ValueError(f"update: 'adaptive' needs the same zeros in every group of {view.name!r}")
        else:
            budget, m = Budget(new=int(prune[:, :n].sum())), None
        rows = (r.square() * G_R.diagonal().to(torch.float64)).to(W.dtype)
        return eliminate_columns_(W, U, alive, n, budget, m, prune=None, row_scale=rows, nm_select=self.nm_select)

    def _update_exact(self, index: int, W: Tensor, prune: Tensor, keep: Tensor, G_R: Tensor, G_L: Tensor) -> None:
        """W ← keep ⊙ (W − Q z) with z_P = (Q_PP)⁻¹ θ_P on the removed blocks."""
        view, block = self.ctx.views[index], self.blocks[index]
        R, C = self.ctx.pattern.rows, self.ctx.pattern.cols
        _, lams = self._group_solve(index, W)
        bm, bn = view.m // R, view.n_weight // C
        Z = torch.zeros_like(W)
        Z[:, : view.n_weight] = lams.reshape(bm, bn, R, C).permute(0, 2, 1, 3).reshape(view.m, view.n_weight)
        Z.masked_fill_(~prune, 0)
        backend = self.ctx.backend_for("kron_qv")
        W.sub_(ops.kron_qv(Z, block.A.detach(), G_R, G_L, precision=self.precision, backend=backend))
        W.masked_fill_(~keep, 0)

    def state_dict(self) -> dict:
        return {**super().state_dict(), "blocks": self.blocks.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        if state:
            super().load_state_dict(state)
            self.blocks.load_state_dict(state["blocks"])

    def memory(self) -> dict[str, int]:
        return {"lambda": sum(p.numel() * p.element_size() for p in self.blocks.parameters())}


def estimate_memory(
    model: nn.Module,
    *,
    layer_types: Sequence[type[nn.Module]] = SUPPORTED_LAYERS,
    include: str | None = None,
    ignore: Sequence[str] = (),
    include_bias: bool = True,
    bytes_per_value: int = 4,
    optimizer: bool = True,
    sequential: str | None = None,
    blocks: str | None = None,
    tokens: int = 0,
    hidden: int | None = None,
    offload: bool = False,
) -> dict[str, int]:
    """Dry run, nothing allocated (a model on the meta device will do): the bytes a prune holds on the model's
    device — λ = (R, L, A) (m² + n² + mn values per layer), Adam's two moments when ``optimizer``, the masks and
    the model's parameters — for the layers a pruner with these selection arguments prunes.

    With ``sequential="blocks"`` (:mod:`~fls_kernels.pruning.sequential`), λ and its optimizer state are those of
    the largest block only (one is resident at a time), plus the captured block ``inputs``: the hidden states of
    ``tokens`` calibration tokens, twice (a block's inputs and the next block's, while propagated), at the model's
    dtype and width ``hidden`` (None: the config's ``hidden_size`` / ``n_embd`` / ``d_model``) — 0 on the device
    when ``offload`` (they are then on the CPU, under ``inputs_cpu``)."""
    views = select_layers(model, layer_types=layer_types, include=include, ignore=ignore, include_bias=include_bias)
    groups = [tuple(range(len(views)))]
    if sequential is not None:
        choice("sequential", sequential, ("blocks",))
        groups = [b.layers for b in find_blocks(model, views, blocks)]

    def state(layers: tuple[int, ...]) -> tuple[int, int]:
        lam = sum(views[i].m ** 2 + views[i].n ** 2 + views[i].m * views[i].n for i in layers) * bytes_per_value
        return lam, (2 * lam + 3 * len(layers) * 4 if optimizer else 0)  # Adam: 2 moments, a step per R, L, A

    lam, opt = max((state(g) for g in groups), key=sum)
    usage = {"lambda": lam, "masks": sum(v.m * v.n_weight for v in views)}
    if optimizer:
        usage["optimizer"] = opt
    usage["model"] = sum(p.numel() * p.element_size() for p in model.parameters())
    if sequential is not None:
        width = hidden if hidden is not None else _hidden_size(model)
        captured = 2 * tokens * width * next(model.parameters()).element_size()
        usage["inputs"] = 0 if offload else captured
        if offload:
            usage["inputs_cpu"] = captured
    usage["total"] = sum(v for k, v in usage.items() if k != "inputs_cpu")
    return usage


def _hidden_size(model: nn.Module) -> int:
    """The width of a block's hidden states, from a transformers-style config; ValueError naming ``hidden``."""
    config = getattr(model, "config", None)
    for key in ("hidden_size", "n_embd", "d_model"):
        value = getattr(config, key, None)
        if isinstance(value, int):
            return value
    raise ValueError("hidden: the model has no config.hidden_size; pass the width of its block inputs")


def rank_one(A: Tensor, iterations: int = 30) -> tuple[Tensor, Tensor]:
    """(r, c) minimising ‖A − r cᵀ‖_F (power iteration from A's column norms), c scaled to unit mean square."""
    tiny = torch.finfo(A.dtype).tiny
    c = A.square().mean(0).sqrt()
    for _ in range(iterations):
        r = A @ c / c.dot(c).clamp_min(tiny)
        c = A.mT @ r / r.dot(r).clamp_min(tiny)
    r = A @ c / c.dot(c).clamp_min(tiny)
    scale = c.square().mean().sqrt().clamp_min(tiny)
    return r * scale, c / scale


def column_factors(block: KronBlock) -> tuple[Tensor, Tensor, Tensor]:
    """(r, c, U) in float64: A ≈ r cᵀ (:func:`rank_one`) and Uᵀ U = D_c G_L D_c (:func:`upper_factor`), what the
    column solver reads of Q; constant while λ is."""
    r, c = rank_one(block.A.detach().to(torch.float64))
    return r, c, upper_factor(c[:, None] * block.L.detach().to(torch.float64))


def upper_factor(M: Tensor, jitter: float = 1e-10) -> Tensor:
    """Upper-triangular U with Uᵀ U = M Mᵀ + ε I (ε = jitter × mean diag M Mᵀ): a Cholesky factor, or where that
    fails on a rounded M Mᵀ, a QR factorisation of [Mᵀ; √ε I] (positive semi-definite by construction)."""
    n = M.shape[0]
    eps = jitter * M.square().sum() / n
    gram = M @ M.mT
    gram.diagonal().add_(eps)
    U, info = torch.linalg.cholesky_ex(gram, upper=True)
    if int(info) == 0 and bool(torch.isfinite(U).all()):
        return U
    stacked = torch.cat([M.mT, eps.sqrt() * torch.eye(n, dtype=M.dtype, device=M.device)])
    U = torch.linalg.qr(stacked, mode="r").R
    signs = torch.where(U.diagonal() < 0, -1.0, 1.0).to(U.dtype)
    return signs[:, None] * U
