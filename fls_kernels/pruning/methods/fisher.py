"""The shared part of the methods that measure the model's Fisher (FLS, K-FAC-OBS, OBD, oBERT): the likelihood,
the Fisher queries, the sampled-label RNG and the damping rule γ = given, or relative · mean(diag F̂)."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from fls_kernels import timing
from fls_kernels.curvature.captures import Capture
from fls_kernels.curvature.fisher import LayerStats, ModelCurvature
from fls_kernels.curvature.likelihoods import Likelihood, get_likelihood
from fls_kernels.data import split_batch
from fls_kernels.pruning.checks import integer, positive
from fls_kernels.pruning.context import Context
from fls_kernels.pruning.method import Method


class FisherMethod(Method):
    """Likelihood, damping and statistics for the curvature methods.

    Args:
        likelihood: "categorical" | "bernoulli" | "gaussian" or a :class:`Likelihood`.
        damping: γ added to the Fisher. None: ``relative_damping`` · mean(diag F̂), measured by ``fit``.
        relative_damping: the factor used when ``damping`` is None.
        stat_batches: batches of sampled-label gradients per statistics pass (initialisation, recomputation).
        label_samples: labels drawn per input in each statistics pass, one backward pass each (default 1): the
            statistics (K-FAC factors, diag F̂) average the draws, so their sampling noise falls as 1/k for k×
            the backward passes.
        seed: seed of sampled labels and probes.
        inputs: batch → (args, kwargs) for the model (default: tensor, first element, or mapping).
        output: model output → the tensor the likelihood reads (default :func:`~fls_kernels.data.model_output`:
            a tensor, a tuple's first element, or ``logits`` / ``last_hidden_state``).
        fvp_chunk: samples per forward/backward of a Fisher-vector product (None: whole batches); bounds the
            activation memory of long sequences (see :class:`~fls_kernels.curvature.fisher.ModelCurvature`).
    """

    #: block-sequential: the Fisher of a Gaussian around each block's output (the block's output distortion)
    block_options = {"likelihood": "gaussian", "output": None}

    def __init__(
        self,
        likelihood: str | Likelihood = "categorical",
        damping: float | None = None,
        *,
        relative_damping: float = 1.0,
        stat_batches: int = 8,
        label_samples: int = 1,
        seed: int = 0,
        inputs: Callable[[object], tuple[tuple, dict]] = split_batch,
        output: Callable[[object], Tensor] | None = None,
        fvp_chunk: int | None = None,
    ) -> None:
        self.likelihood = get_likelihood(likelihood)
        self.damping = positive("damping", damping) if damping is not None else None
        self.relative_damping = positive("relative_damping", relative_damping)
        self.stat_batches = integer("stat_batches", stat_batches, 1)
        self.label_samples = integer("label_samples", label_samples, 1)
        self.fvp_chunk = integer("fvp_chunk", fvp_chunk, 1) if fvp_chunk is not None else None
        self.seed = seed
        self.inputs = inputs
        self.output = output

    def bind(self, ctx: Context) -> None:
        super().bind(ctx)
        self.curvature = ModelCurvature(
            ctx.model, ctx.views, self.likelihood, inputs=self.inputs, output=self.output, fvp_chunk=self.fvp_chunk
        )
        self.generator = torch.Generator(device=ctx.device)
        self.generator.manual_seed(self.seed)

    def unreached(self, batch: object) -> list[int]:
        """The layers whose weights do not reach the tensor the likelihood reads (their Fisher is 0)."""
        return self.curvature.unreached(batch)

    @staticmethod
    def mean_diag(stats: list[LayerStats]) -> float:
        """mean(diag F̂) over every prunable entry."""
        return sum(s.diag_trace for s in stats) / sum(s.view.m * s.view.n for s in stats)

    def statistics(self, kfac: bool, captures: list[Capture] | None = None, diag: bool = True) -> list[LayerStats]:
        """Per-layer statistics over ``stat_batches`` batches of the attached data (sampled labels); with
        ``captures``, the batches' patches and output gradients are appended to it; ``diag=False`` keeps only
        tr F̂ of diag F̂."""
        stream = self.ctx.data.require("fit")
        with timing.section("statistics"):
            return self.curvature.statistics(
                stream,
                self.stat_batches,
                kfac=kfac,
                diag=diag,
                generator=self.generator,
                comm=self.ctx.mode.comm,
                captures=captures,
                label_samples=self.label_samples,
            )

    def resolve_damping(self, mean_diag: float) -> float:
        """γ: the given damping, or relative_damping · mean(diag F̂) on first use."""
        if self.damping is None:
            self.damping = self.relative_damping * mean_diag
            if not self.damping > 0:
                raise ValueError("damping: the measured Fisher is zero; pass an explicit damping")
        return self.damping

    def state_dict(self) -> dict:
        return {"damping": self.damping, "generator": self.generator.get_state()}

    def load_state_dict(self, state: dict) -> None:
        if state:
            self.damping = state["damping"]
            self.generator.set_state(state["generator"])
