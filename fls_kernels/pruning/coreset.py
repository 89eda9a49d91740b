"""CoresetPruner: data-dependent coreset sparsification (Baykal et al., "Data-Dependent Coresets for
Compressing Neural Networks with Applications to Generalization Bounds").

Empirical sensitivity of weight (i, j) of a neuron i from calibration activations a (patches, bias 1 included):
    s_ij = max_x |w_ij a_j(x)| / Σ_k |w_ik a_k(x)|
Weights are sampled with probability growing with s (priority sampling: priority q = s / u, u ∼ U(0, 1]; the
k lowest priorities are pruned, which keeps the sparsity exact), and the kept ones are reweighted by
max(1, τ / s_ij), τ = the largest pruned priority (the unbiased priority-sampling estimator).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from fls_kernels import timing
from fls_kernels.curvature.fisher import eval_mode, split_batch
from fls_kernels.distributed.comm import attempt
from fls_kernels.pruning.base import BasePruner
from fls_kernels.pruning.checks import count


class CoresetPruner(BasePruner):
    """Sensitivity-based importance sampling with reweighting, with the shared life cycle and selection rules.

    Args:
        model: the network, pruned in place.
        calib_batches: batches of activations per sensitivity estimate (recomputed before every sub-step).
        reweight: rescale the kept weights by max(1, τ/s) (the method's estimator); False keeps them.
        seed: seed of the sampling.
        inputs: batch → (args, kwargs) for the model.
        **kwargs: :class:`~fls_kernels.pruning.base.BasePruner` arguments.
    """

    def __init__(
        self,
        model: nn.Module,
        *,
        calib_batches: int = 8,
        reweight: bool = True,
        seed: int = 0,
        inputs=split_batch,
        **kwargs,
    ) -> None:
        calib_batches = count("calib_batches", calib_batches, 1)
        super().__init__(model, **kwargs)
        self.calib_batches = calib_batches
        self.reweight = reweight
        self.inputs = inputs
        self.generator = torch.Generator(device=self.device)
        self.generator.manual_seed(seed)
        self.sensitivity: list[Tensor] | None = None
        self._priority: list[Tensor] = []
        self._tau: list[float] = []

    def _recompute(self) -> None:
        with timing.section("statistics"):
            self._estimate()

    def _estimate(self) -> None:
        stream = self._require_data("fit")
        sens = [torch.zeros(v.m, v.n_weight, dtype=torch.float64, device=self.device) for v in self.views]
        captured: dict[int, Tensor] = {}
        handles = [
            v.module.register_forward_hook(lambda mod, a, out, i=i: captured.__setitem__(i, a[0].detach()))
            for i, v in enumerate(self.views)
        ]
        try:
            with attempt(self.comm), eval_mode(self.model), torch.no_grad():
                for _ in range(self.calib_batches):
                    args, kwargs = self.inputs(next(stream))
                    self.model(*args, **kwargs)
                    for i, view in enumerate(self.views):
                        sens[i] = torch.maximum(sens[i], self._batch_sensitivity(view, captured.pop(i)))
        finally:
            for h in handles:
                h.remove()
        if self.comm is not None:  # the max over every rank's batches
            self.comm.all_reduce_(sens, "max")
            self.comm.check()
        self.sensitivity = [s.to(self._work_dtype()) for s in sens]

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

    def _fit(self, steps: int) -> list[float]:
        self._recompute()
        return []

    def _is_fitted(self) -> bool:
        return self.sensitivity is not None

    def _before_substep(self, substep: int) -> None:
        self._recompute()
        self._priority = []

    def _scores(self, index: int, W: Tensor, alive: Tensor) -> Tensor:
        s = self.sensitivity[index]
        u = 1 - torch.rand(s.shape, generator=self.generator, device=s.device, dtype=s.dtype)  # (0, 1]
        q = (s / u).masked_fill(~alive[:, : s.shape[1]], float("inf"))
        self._priority.append(q)
        return q

    def _selected(self, chosen: list[Tensor]) -> None:
        pruned = [q[c] for q, c in zip(self._priority, chosen)]
        if self.allocation == "global":
            top = max((float(p.max()) for p in pruned if p.numel()), default=0.0)
            self._tau = [top] * len(pruned)
        else:
            self._tau = [float(p.max()) if p.numel() else 0.0 for p in pruned]

    def _update(self, index: int, W: Tensor, prune: Tensor, keep: Tensor) -> None:
        if self.reweight and self._tau:
            n = self.views[index].n_weight
            s = self.sensitivity[index]
            scale = torch.where(s > 0, (self._tau[index] / s).clamp_min(1.0), torch.ones_like(s))
            W[:, :n] *= scale
        W.masked_fill_(~keep, 0)
        if index == len(self.views) - 1:
            self._priority = []

    def _state(self) -> dict:
        return {"generator": self.generator.get_state(), "sensitivity": self.sensitivity}

    def _load_state(self, state: dict) -> None:
        if state:
            self.generator.set_state(state["generator"])
            self.sensitivity = state["sensitivity"]

    def _memory(self) -> dict[str, int]:
        return {"sensitivity": sum(s.numel() * s.element_size() for s in self.sensitivity or [])}
