"""CurvaturePruner: the shared base of the pruners that measure the model's Fisher (FLS, K-FAC, OBD, oBERT)."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor, nn

from fls_kernels import timing
from fls_kernels.curvature.fisher import LayerStats, ModelCurvature, split_batch
from fls_kernels.curvature.likelihoods import Likelihood, get_likelihood
from fls_kernels.pruning.base import BasePruner
from fls_kernels.pruning.checks import count, positive


class CurvaturePruner(BasePruner):
    """Adds the likelihood, the Fisher queries and the damping rule to :class:`BasePruner`.

    Args:
        model: the network, pruned in place.
        likelihood: "categorical" | "bernoulli" | "gaussian" or a :class:`Likelihood`.
        damping: γ added to the Fisher. None: ``relative_damping`` · mean(diag F̂), measured by :meth:`fit`.
        relative_damping: the factor used when ``damping`` is None.
        stat_batches: batches of sampled-label gradients per statistics pass (initialisation, recomputation).
        seed: seed of sampled labels and probes.
        inputs: batch → (args, kwargs) for the model (default: tensor, first element, or mapping).
        output: model output → the tensor the likelihood reads (default: identity).
        fvp_chunk: samples per forward/backward of a Fisher-vector product (None: whole batches); bounds the
            activation memory of long sequences (see :class:`~fls_kernels.curvature.fisher.ModelCurvature`).
        **kwargs: :class:`BasePruner` arguments (pattern, schedule, layers, allocation, backend…).
    """

    def __init__(
        self,
        model: nn.Module,
        likelihood: str | Likelihood = "categorical",
        damping: float | None = None,
        *,
        relative_damping: float = 1.0,
        stat_batches: int = 8,
        seed: int = 0,
        inputs: Callable[[object], tuple[tuple, dict]] = split_batch,
        output: Callable[[object], Tensor] | None = None,
        fvp_chunk: int | None = None,
        **kwargs,
    ) -> None:
        likelihood = get_likelihood(likelihood)
        if damping is not None:
            damping = positive("damping", damping)
        relative_damping = positive("relative_damping", relative_damping)
        stat_batches = count("stat_batches", stat_batches, 1)
        if fvp_chunk is not None:
            count("fvp_chunk", fvp_chunk, 1)
        super().__init__(model, **kwargs)
        self.likelihood = likelihood
        self.damping = damping
        self.relative_damping = relative_damping
        self.stat_batches = stat_batches
        self.inputs = inputs
        self.curvature = ModelCurvature(
            self.model, self.views, likelihood, inputs=inputs, output=output, fvp_chunk=fvp_chunk
        )
        self.generator = torch.Generator(device=self.device)
        self.generator.manual_seed(seed)

    @staticmethod
    def mean_diag(stats: list[LayerStats]) -> float:
        """mean(diag F̂) over every prunable entry."""
        return sum(float(s.diag.sum()) for s in stats) / sum(s.diag.numel() for s in stats)

    def _statistics(self, kfac: bool) -> list[LayerStats]:
        """Per-layer statistics over ``stat_batches`` batches of the attached data (sampled labels)."""
        stream = self._require_data("fit")
        with timing.section("statistics"):
            return self.curvature.statistics(
                stream, self.stat_batches, kfac=kfac, generator=self.generator, comm=self.comm
            )

    def _resolve_damping(self, mean_diag: float) -> float:
        """γ: the given damping, or relative_damping · mean(diag F̂) on first use."""
        if self.damping is None:
            self.damping = self.relative_damping * mean_diag
            if not self.damping > 0:
                raise ValueError("damping: the measured Fisher is zero; pass an explicit damping")
        return self.damping

    def _curvature_state(self) -> dict:
        return {"damping": self.damping, "generator": self.generator.get_state()}

    def _load_curvature_state(self, state: dict) -> None:
        self.damping = state["damping"]
        self.generator.set_state(state["generator"])
