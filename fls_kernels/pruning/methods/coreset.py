"""CoresetPruner: data-dependent coreset sparsification (Baykal et al., "Data-Dependent Coresets for
Compressing Neural Networks with Applications to Generalization Bounds").

Empirical sensitivity of weight (i, j) of a neuron i from calibration activations a (patches, bias 1 included):
    s_ij = max_x |w_ij a_j(x)| / Σ_k |w_ik a_k(x)|
Weights are sampled with probability growing with s (priority sampling: priority q = s / u, u ∼ U(0, 1]; the
k lowest priorities are pruned, which keeps the sparsity exact), and the kept ones are reweighted by
max(1, τ / s_ij), τ = the largest pruned priority (the unbiased priority-sampling estimator).
"""

from __future__ import annotations

import logging
from collections.abc import Callable

import torch
from torch import Tensor

from fls_kernels import timing
from fls_kernels.data import check_finite, eval_mode, loader_length, split_batch
from fls_kernels.distributed.comm import attempt
from fls_kernels.layers.attention import unfused
from fls_kernels.pruning.checks import integer
from fls_kernels.pruning.context import Context
from fls_kernels.pruning.method import Method, Recomputing
from fls_kernels.pruning.pruner import Pruner

log = logging.getLogger("fls_kernels.pruning")


class Coreset(Recomputing, Method):
    """Sensitivity-based importance sampling with reweighting.

    Args:
        calib_batches: batches of activations per sensitivity estimate (recomputed before every sub-step;
            the first after ``fit`` reads the fit's estimate while nothing it came from changed).
        reweight: rescale the kept weights by max(1, τ/s) (the method's estimator); False keeps them.
        seed: seed of the sampling.
        inputs: batch → (args, kwargs) for the model.
    """

    name = "coreset"
    quick_options = {"calib_batches": 2}

    def __init__(
        self,
        *,
        calib_batches: int = 8,
        reweight: bool = True,
        seed: int = 0,
        inputs: Callable[[object], tuple[tuple, dict]] = split_batch,
    ) -> None:
        self.calib_batches = integer("calib_batches", calib_batches, 1)
        self.reweight = reweight
        self.seed = seed
        self.inputs = inputs
        self.sensitivity: list[Tensor] | None = None
        self._priority: list[Tensor] = []
        self._tau: list[float] = []
        self._warned = False  # about calib_batches above the loader's length

    def bind(self, ctx: Context) -> None:
        super().bind(ctx)
        self.generator = torch.Generator(device=ctx.device)
        self.generator.manual_seed(self.seed)

    def fit(self, steps: int) -> list[float]:
        """The first sensitivity estimate (warning once when ``calib_batches`` exceeds the loader's length)."""
        held = loader_length(self.ctx.data.require("fit").loader)
        if held is not None and self.calib_batches > held and not self._warned:
            self._warned = True
            log.warning(
                "%s: calib_batches=%d but the loader holds %d batches, so each estimate reads some of them twice "
                "(the max over samples does not change; only time is spent); pass calib_batches ≤ %d",
                self.ctx.owner,
                self.calib_batches,
                held,
                held,
            )
        return super().fit(steps)

    def recompute(self) -> None:
        with timing.section("statistics"):
            self._estimate()

    def _estimate(self) -> None:
        ctx = self.ctx
        stream = ctx.data.require("fit")
        sens = [torch.zeros(v.m, v.n_weight, dtype=torch.float64, device=ctx.device) for v in ctx.views]
        captured: dict[int, Tensor] = {}
        handles = [
            m.register_forward_hook(lambda mod, a, out, i=i: captured.__setitem__(i, a[0].detach()))
            for i, v in enumerate(ctx.views)
            for m in v.modules
        ]
        try:
            with attempt(ctx.mode.comm), eval_mode(ctx.model), unfused(ctx.model, math_sdpa=False), torch.no_grad():
                for _ in range(self.calib_batches):
                    batch = next(stream)
                    check_finite(batch, stream.last_index)
                    args, kwargs = self.inputs(batch)
                    ctx.model(*args, **kwargs)
                    for i, view in enumerate(ctx.views):
                        sens[i] = torch.maximum(sens[i], self._batch_sensitivity(view, captured.pop(i)))
        finally:
            for h in handles:
                h.remove()
        if ctx.mode.comm is not None:  # the max over every rank's batches
            ctx.mode.comm.all_reduce_(sens, "max")
            ctx.mode.comm.check()
        self.sensitivity = [s.to(ctx.dtype) for s in sens]

    @staticmethod
    def _batch_sensitivity(view, x: Tensor) -> Tensor:
        """max over samples and locations of |w_ij a_j| / Σ_k |w_ik a_k|, for the weight columns: [m, n_w]."""
        a = view.patches(x).to(torch.float64).abs()  # [B, g, T, n]
        g = a.shape[1]
        W = view.matrix(torch.float64).abs().reshape(g, view.m // g, view.n)  # [g, m/g, n]
        a = a.transpose(0, 1).reshape(g, -1, view.n)  # [g, P, n] positions P = B·T
        best = torch.zeros(g, view.m // g, view.n, dtype=torch.float64, device=a.device)
        chunk = max(1, (1 << 22) // max(1, view.m // g * view.n))
        for s in range(0, a.shape[1], chunk):
            part = a[:, s : s + chunk]  # [g, p, n]
            denom = torch.einsum("gpn,gmn->gpm", part, W).clamp_min(torch.finfo(torch.float64).tiny)
            ratio = part[:, :, None, :] / denom[..., None]  # [g, p, m/g, n]
            best = torch.maximum(best, ratio.amax(1))
        return (best * W).reshape(view.m, view.n)[:, : view.n_weight]

    @property
    def fitted(self) -> bool:
        return self.sensitivity is not None

    def before_substep(self, substep: int) -> None:
        super().before_substep(substep)
        self._priority = []

    def scores(self, index: int, W: Tensor, alive: Tensor) -> Tensor:
        s = self.sensitivity[index]
        u = 1 - torch.rand(s.shape, generator=self.generator, device=s.device, dtype=s.dtype)  # (0, 1]
        q = (s / u).masked_fill(~alive[:, : s.shape[1]], float("inf"))
        self._priority.append(q)
        return q

    def selected(self, chosen: list[Tensor | None]) -> None:
        pruned = [q[c] for q, c in zip(self._priority, chosen)]
        if self.ctx.allocation == "global":
            top = max((float(p.max()) for p in pruned if p.numel()), default=0.0)
            self._tau = [top] * len(pruned)
        else:
            self._tau = [float(p.max()) if p.numel() else 0.0 for p in pruned]

    def update(self, index: int, W: Tensor, prune: Tensor, keep: Tensor) -> None:
        if self.reweight and self._tau:
            n = self.ctx.views[index].n_weight
            s = self.sensitivity[index]
            scale = torch.where(s > 0, (self._tau[index] / s).clamp_min(1.0), torch.ones_like(s))
            W[:, :n] *= scale
        W.masked_fill_(~keep, 0)
        if index == len(self.ctx.views) - 1:
            self._priority = []

    def state_dict(self) -> dict:
        return {"generator": self.generator.get_state(), "sensitivity": self.sensitivity}

    def load_state_dict(self, state: dict) -> None:
        if state:
            self.generator.set_state(state["generator"])
            self.sensitivity = state["sensitivity"]

    def memory(self) -> dict[str, int]:
        return {"sensitivity": sum(s.numel() * s.element_size() for s in self.sensitivity or [])}


class CoresetPruner(Pruner):
    """Data-dependent coresets (empirical sensitivities, importance sampling, reweighting), with the shared
    life cycle and selection rules.

    Args: ``calib_batches``, ``reweight``, ``seed``, ``inputs`` (:class:`Coreset`), plus the
    :class:`~fls_kernels.pruning.pruner.Pruner` arguments.
    """

    method_class = Coreset
