"""The FishLeg Surgeon: OBS pruning with a learned Kronecker inverse Fisher Q(λ) ≈ (F + γI)⁻¹."""

from __future__ import annotations

import logging

from torch import Tensor

from fls_kernels.curvature.fitter import AuxFitter
from fls_kernels.curvature.likelihoods import Likelihood
from fls_kernels.pruning.checks import choice, integer, positive
from fls_kernels.pruning.methods.kron_obs import KronOBS, estimate_memory
from fls_kernels.pruning.pruner import Pruner

log = logging.getLogger("fls_kernels.prune")

INITS = ("diagonal", "identity", "kfac")


class FishLeg(KronOBS):
    """λ learnt by the auxiliary loss (:class:`~fls_kernels.curvature.fitter.AuxFitter`), warm-started from
    the diagonal, identity or K-FAC statistics, refined on the current masks before each sub-step.

    Args: see :class:`FishLegPruner`.
    """

    name = "fls"

    def __init__(
        self,
        likelihood: str | Likelihood = "categorical",
        damping: float | None = None,
        *,
        init: str = "diagonal",
        init_batches: int = 8,
        lr: float = 1e-3,
        precondition: bool = True,
        refine_steps: int = 100,
        gradual_aux_steps: int = 1,
        **kwargs,
    ) -> None:
        self.init = choice("init", init, INITS)
        self.lr = positive("lr", lr)
        self.refine_steps = integer("refine_steps", refine_steps)
        self.gradual_aux_steps = integer("gradual_aux_steps", gradual_aux_steps)
        init_batches = integer("init_batches", init_batches, 1)
        super().__init__(likelihood, damping, stat_batches=init_batches, **kwargs)
        self.precondition = precondition
        self.fitter: AuxFitter | None = None
        self._stale = False  # masks changed since λ was last refined

    @property
    def fitted(self) -> bool:
        return self.fitter is not None

    def fit(self, steps: int) -> list[float]:
        """``steps`` aux steps (masked once pruning started); the first call initialises λ and γ."""
        if self.fitter is None:
            self._initialise()
        stream = self.ctx.data.require("fit")
        losses = self.fitter.run(stream, steps, masks=self._masks(), progress=self.ctx.progress, desc="fit")
        if steps:
            self._stale = False
        return losses

    def _initialise(self) -> None:
        stats = self.statistics(kfac=self.init == "kfac")
        mean_diag = self.mean_diag(stats)
        damping = self.resolve_damping(mean_diag)
        log.info("mean diag F̂ %.4g, damping γ %.4g, init %s", mean_diag, damping, self.init)
        for i, block in self.local_blocks():
            s = stats[i]
            if self.init == "diagonal":
                block.init_diagonal(s.diag, damping)
            elif self.init == "kfac":
                block.init_kfac(s.act_cov, s.grad_cov, damping)
            else:
                block.init_identity(1.0 / (mean_diag + damping))
        self.fitter = self._make_fitter()

    def _make_fitter(self) -> AuxFitter:
        return AuxFitter(
            list(self.blocks),
            self.curvature.fvp,
            self.damping,
            lr=self.lr,
            precondition=self.precondition,
            precision=self.precision,
            generator=self.generator,
            backend=self.ctx.backend_for("kron_qv"),
            reduction=self.ctx.mode.aux_reduction(self.curvature.batch_size),
        )

    def _masks(self) -> list[Tensor] | None:
        if self.ctx.masks.num_pruned() == 0:
            return None
        return [self.ctx.masks.full(i).to(self.blocks[i].dtype) for i in range(len(self.ctx.views))]

    def _refine(self, what: str, steps: int, desc: str) -> None:
        self.fitter.run(self.ctx.data.require(what), steps, masks=self._masks(), desc=desc)
        self._stale = False

    def before_substep(self, substep: int) -> None:
        if self._stale and self.refine_steps:
            self._refine("prune", self.refine_steps, "refine")
        self._stale = False

    def between_prunes(self) -> None:
        if self.fitter is not None and self.gradual_aux_steps:
            self._refine("step", self.gradual_aux_steps, "track")

    def update(self, index: int, W: Tensor, prune: Tensor, keep: Tensor) -> Tensor | None:
        self._stale = True
        return super().update(index, W, prune, keep)

    def state_dict(self) -> dict:
        return {
            **super().state_dict(),
            "optimizer": self.fitter.optimizer.state_dict() if self.fitter is not None else None,
            "history": list(self.fitter.history) if self.fitter is not None else [],
            "stale": self._stale,
        }

    def load_state_dict(self, state: dict) -> None:
        if not state:
            return
        super().load_state_dict(state)
        self._stale = state["stale"]
        if state["optimizer"] is None:
            self.fitter = None
            return
        if self.fitter is None:
            self.fitter = self._make_fitter()
        self.fitter.optimizer.load_state_dict(state["optimizer"])
        self.fitter.history[:] = state["history"]

    def memory(self) -> dict[str, int]:
        usage = super().memory()
        if self.fitter is not None:
            usage["optimizer"] = sum(
                t.numel() * t.element_size()
                for s in self.fitter.optimizer.state.values()
                for t in s.values()
                if hasattr(t, "numel")
            )
        return usage


class FishLegPruner(Pruner):
    """The FishLeg Surgeon.

    Args:
        model: the network, pruned in place.
        likelihood: "categorical" | "bernoulli" | "gaussian" or a :class:`Likelihood`: the model's output
            distribution, whose true Fisher Q approximates.
        damping: γ. None (default): ``relative_damping`` · mean(diag F̂), measured at the start of :meth:`fit`.
        init: "diagonal" (Q₀ = diag(F̂ + γ)⁻¹, default), "identity" (Q₀ = I / (mean diag F̂ + γ)) or "kfac".
        init_batches: batches of sampled-label gradients used for the initialisation statistics.
        lr: Adam learning rate on λ.
        precondition: precondition the aux residual by Q (recommended).
        refine_steps: masked aux steps before each sub-step after the masks changed (warm start).
        gradual_aux_steps: masked aux steps on each training step that does not prune (gradual pruning with
            :meth:`step`): λ keeps tracking the fine-tuned model.
        **kwargs: ``relative_damping``, ``seed``, ``inputs``, ``output``, ``fvp_chunk``, ``precision``,
            ``block_score``, ``update`` ("diagonal" default; "columns"; "adaptive", best on transformers with
            ``init="kfac"``, a small ``relative_damping`` such as 1e-4 and ``allocation="uniform"``:
            :class:`~fls_kernels.pruning.methods.kron_obs.KronOBS`), and the
            :class:`~fls_kernels.pruning.pruner.Pruner` arguments (pattern, schedule, substeps, layer_types,
            include, ignore, allocation, include_bias, backend, progress, distributed).

    Example:
        >>> pruner = FishLegPruner(model, likelihood="categorical")
        >>> pruner.fit(calib_loader, steps=2000)
        >>> pruner.prune(0.9, substeps=16)
    """

    method_class = FishLeg
    estimate_memory = staticmethod(estimate_memory)
