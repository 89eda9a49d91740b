"""OBERTPruner: the Optimal BERT Surgeon — OBS with a block-diagonal *empirical* Fisher.

The flattened weights of each layer are cut into blocks of B consecutive entries; per block
F_B = γ I + (1/m) Σ_i g_i g_iᵀ over m per-sample loss gradients (true labels, masked), inverted by m Woodbury
rank-1 updates from (1/γ) I, and recomputed before every pruning sub-step (the first after ``fit`` reads the fit's
estimate while nothing it came from changed). Score ρ_q = θ_q² / (2 [F⁻¹]_qq);
update δθ = −F⁻¹ z with z = M_P ⊙ θ ⊘ diag(F⁻¹) (independent approximation, within each block).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import Tensor
from torch.func import functional_call, grad, vmap
from torch.utils._pytree import tree_flatten, tree_unflatten

from fls_kernels import timing
from fls_kernels.data import check_finite, eval_mode
from fls_kernels.distributed.comm import attempt
from fls_kernels.layers.attention import unfused
from fls_kernels.pruning.checks import choice, integer
from fls_kernels.pruning.method import Recomputing
from fls_kernels.pruning.methods.fisher import FisherMethod
from fls_kernels.pruning.pruner import Pruner


def _labels(batch: object) -> Tensor:
    if isinstance(batch, (tuple, list)) and len(batch) >= 2 and isinstance(batch[1], Tensor):
        return batch[1]
    raise ValueError("loader: OBERTPruner needs labelled batches (x, y, ...) for the empirical Fisher")


class OBERT(Recomputing, FisherMethod):
    """oBERT, faithful to the published method.

    Args:
        block_size: B, entries per Fisher block (50 in the paper).
        num_grads: m, per-sample gradients per Fisher estimate (1024 in the paper).
        grad_chunk: per-sample gradients computed at once (memory bound).
        fisher: "empirical" (default, the paper: gradients of the loss at the batch's labels) or "sampled"
            (labels drawn from the model: the true Fisher, for models whose data has no labels, e.g. embeddings).
        targets: batch → labels for the empirical Fisher (default: ``batch[1]``).
        *args, **kwargs: :class:`~fls_kernels.pruning.methods.fisher.FisherMethod` arguments; ``damping`` is
            the dampening λ (default: ``relative_damping`` · mean of the empirical Fisher diagonal).
    """

    name = "obert"
    quick_options = {"num_grads": 24, "block_size": 16}
    hidden_options = ("label_samples",)  # its gradients are drawn by fisher= and num_grads
    #: a block's output has no labels: the sampled (true) Fisher of its Gaussian
    block_options = {**FisherMethod.block_options, "fisher": "sampled"}

    def __init__(
        self,
        *args,
        block_size: int = 50,
        num_grads: int = 1024,
        grad_chunk: int = 64,
        fisher: str = "empirical",
        targets: Callable[[object], Tensor] = _labels,
        **kwargs,
    ) -> None:
        choice("fisher", fisher, ("empirical", "sampled"))
        block_size = integer("block_size", block_size, 1)
        num_grads = integer("num_grads", num_grads, 1)
        grad_chunk = integer("grad_chunk", grad_chunk, 1)
        super().__init__(*args, **kwargs)
        self.block_size, self.num_grads, self.grad_chunk = block_size, num_grads, grad_chunk
        self.targets = targets
        self.fisher = fisher
        self.finv: list[Tensor] | None = None  # per layer [blocks, B, B]

    # ------------------------------------------------------------------------------------------ Fisher
    def _per_sample_grads(self, batch: object) -> list[Tensor]:
        """Per-sample gradients of the nll w.r.t. each layer's weight, as [b, m·n_weight] (masked)."""
        args, kwargs = self.inputs(batch)
        if self.fisher == "empirical":
            y = self.targets(batch)
        else:
            with torch.no_grad():
                y = self.likelihood.sample(self.curvature.output(self.ctx.model(*args, **kwargs)), self.generator)
        weights = {v.weight_key: v.weight.detach() for v in self.ctx.views}
        rows = y.shape[0]
        # per-sample: the inputs with the batch's leading size (others, e.g. None or broadcast masks, shared)
        leaves, spec = tree_flatten((args, kwargs))
        dims = [0 if isinstance(x, Tensor) and x.dim() and x.shape[0] == rows else None for x in leaves]
        batched = [x for x, d in zip(leaves, dims) if d == 0]

        def loss(params, rows_of, t):
            it = iter(rows_of)
            a, k = tree_unflatten([next(it).unsqueeze(0) if d == 0 else x for x, d in zip(leaves, dims)], spec)
            out = self.curvature.output(functional_call(self.ctx.model, params, a, k, strict=False))
            return self.likelihood.nll(out, t.unsqueeze(0)).sum()

        with torch.no_grad():  # torch.func.grad ignores it; it keeps the other parameters out of autograd
            per = vmap(grad(loss), in_dims=(None, 0, 0), chunk_size=self.grad_chunk)(weights, batched, y)
        out = []
        for v, name in zip(self.ctx.views, weights):
            g = v.weight_matrix(per[name]).flatten(1) * v.weight_matrix(self.ctx.masks[v.name]).reshape(1, -1)
            out.append(g.to(self.ctx.dtype))
        return out

    def recompute(self) -> None:
        with timing.section("statistics"):
            self._estimate()

    def _estimate(self) -> None:
        """F_B⁻¹ by m Woodbury rank-1 updates over the first m per-sample gradients of the data (with
        ``distributed``: of the ranks' batches in rank order, every rank's kept gradients broadcast to all)."""
        G = [torch.cat(g) for g in self._collect()]  # [m_grads, d_layer], the same order on every rank
        damping = self.resolve_damping(sum(float((g**2).mean(0).sum()) for g in G) / self.ctx.masks.num_prunable())
        B = self.block_size
        finvs = []
        for g in G:
            d = g.shape[1]
            blocks = math.ceil(d / B)
            g = torch.nn.functional.pad(g, (0, blocks * B - d)).reshape(g.shape[0], blocks, B)
            finv = torch.eye(B, dtype=g.dtype, device=g.device).repeat(blocks, 1, 1) / damping
            m = float(self.num_grads)
            for gi in g:  # Woodbury: (F + ggᵀ/m)⁻¹ = F⁻¹ − F⁻¹g gᵀF⁻¹ / (m + gᵀF⁻¹g)
                u = torch.bmm(finv, gi.unsqueeze(-1)).squeeze(-1)
                finv -= u.unsqueeze(-1) * u.unsqueeze(-2) / (m + (gi * u).sum(-1)).view(-1, 1, 1)
            finvs.append(finv)
        self.finv = finvs  # set only once every block is done

    def _collect(self) -> list[list[Tensor]]:
        """Per layer, chunks of per-sample gradients [rows, m·n_weight] adding up to ``num_grads`` rows: the first
        rows of the data — with ``distributed``, of the ranks' batches in rank order, each rank's kept rows
        broadcast to all."""
        stream = self.ctx.data.require("fit")
        comm = self.ctx.mode.comm
        me = comm.rank if comm is not None else 0
        grads: list[list[Tensor]] = [[] for _ in self.ctx.views]
        taken = 0
        with eval_mode(self.ctx.model), unfused(self.ctx.model):
            while taken < self.num_grads:
                per = None
                with attempt(comm):
                    batch = next(stream)
                    check_finite(batch, stream.last_index)
                    per = self._per_sample_grads(batch)
                local = per[0].shape[0] if per is not None else 0
                sizes = [local]
                if comm is not None:
                    sizes = comm.sizes(local)
                    comm.check()
                if sum(sizes) == 0:
                    raise ValueError("loader: a batch with no samples")
                before = 0
                for rank, rows in enumerate(sizes):  # rank order = the union batch's row order
                    keep = min(max(self.num_grads - taken - before, 0), rows)
                    before += rows
                    if keep == 0:
                        continue
                    if rank == me:
                        parts = [g[:keep].contiguous() for g in per]
                    else:
                        parts = [
                            torch.empty(keep, v.m * v.n_weight, dtype=self.ctx.dtype, device=self.ctx.device)
                            for v in self.ctx.views
                        ]
                    if comm is not None:
                        comm.broadcast_(parts, rank)
                    for i, g in enumerate(parts):
                        grads[i].append(g)
                taken = min(self.num_grads, taken + sum(sizes))
        return grads

    @property
    def fitted(self) -> bool:
        return self.finv is not None

    def forget(self) -> None:
        self.finv = None

    # ------------------------------------------------------------------------------------------ OBS
    def _blocks(self, index: int, x: Tensor) -> Tensor:
        """Layer ``index``'s weight part of an [m, n] matrix as padded blocks [blocks, B]."""
        view, B = self.ctx.views[index], self.block_size
        flat = x[:, : view.n_weight].reshape(-1)
        blocks = self.finv[index].shape[0]
        return torch.nn.functional.pad(flat, (0, blocks * B - flat.numel())).reshape(blocks, B)

    def scores(self, index: int, W: Tensor, alive: Tensor) -> Tensor:
        view = self.ctx.views[index]
        diag = self.finv[index].diagonal(dim1=1, dim2=2).reshape(-1)[: view.m * view.n_weight]
        rho = (W[:, : view.n_weight] ** 2).reshape(-1) / (2 * diag)
        return rho.reshape(view.m, view.n_weight).masked_fill(~alive[:, : view.n_weight], float("inf"))

    def update(self, index: int, W: Tensor, prune: Tensor, keep: Tensor) -> None:
        view, finv = self.ctx.views[index], self.finv[index]
        theta = self._blocks(index, W)
        chosen = self._blocks(index, prune.to(W.dtype)).bool()
        z = torch.where(chosen, theta / finv.diagonal(dim1=1, dim2=2), torch.zeros_like(theta))
        delta = -torch.bmm(finv, z.unsqueeze(-1)).squeeze(-1).reshape(-1)[: view.m * view.n_weight]
        W[:, : view.n_weight] += delta.reshape(view.m, view.n_weight)
        W.masked_fill_(~keep, 0)

    # ------------------------------------------------------------------------------------------ state
    def state_dict(self) -> dict:
        return {**super().state_dict(), "finv": self.finv}

    def load_state_dict(self, state: dict) -> None:
        if state:
            super().load_state_dict(state)
            self.finv = state["finv"]

    def memory(self) -> dict[str, int]:
        return {"fisher_inverse": sum(f.numel() * f.element_size() for f in self.finv or [])}


class OBERTPruner(Pruner):
    """The Optimal BERT Surgeon (block-diagonal empirical Fisher, Woodbury inverse, recomputed each sub-step),
    with the shared life cycle and selection rules.

    Args: ``likelihood``, ``damping``, ``block_size``, ``num_grads``, ``grad_chunk``, ``fisher``, ``targets``
    (:class:`OBERT`) and the keywords of :class:`~fls_kernels.pruning.methods.fisher.FisherMethod`, plus the
    :class:`~fls_kernels.pruning.pruner.Pruner` arguments.
    """

    method_class = OBERT
