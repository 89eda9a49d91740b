"""FishLegPruner: OBS pruning with a learned Kronecker inverse Fisher Q(λ) ≈ (F + γI)⁻¹ (the FishLeg Surgeon)."""

from __future__ import annotations

import logging

from torch import Tensor, nn

from fls_kernels.curvature.fitter import AuxFitter
from fls_kernels.curvature.likelihoods import Likelihood
from fls_kernels.pruning.checks import count, positive
from fls_kernels.pruning.kron_obs import KronOBSPruner, local_blocks

log = logging.getLogger("fls_kernels.prune")

INITS = ("diagonal", "identity", "kfac")


class FishLegPruner(KronOBSPruner):
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
            ``block_score``, and the :class:`~fls_kernels.pruning.base.BasePruner` arguments (pattern, schedule,
            substeps, layer_types, include, ignore, allocation, include_bias, backend, progress, distributed).

    Example:
        >>> pruner = FishLegPruner(model, likelihood="categorical")
        >>> pruner.fit(calib_loader, steps=2000)
        >>> pruner.prune(0.9, substeps=16)
    """

    def __init__(
        self,
        model: nn.Module,
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
        if init not in INITS:
            raise ValueError(f"init: expected one of {INITS}, got {init!r}")
        positive("lr", lr)
        refine_steps = count("refine_steps", refine_steps)
        gradual_aux_steps = count("gradual_aux_steps", gradual_aux_steps)
        init_batches = count("init_batches", init_batches, 1)
        super().__init__(model, likelihood, damping, stat_batches=init_batches, **kwargs)
        self.init = init
        self.lr = float(lr)
        self.precondition = precondition
        self.refine_steps = refine_steps
        self.gradual_aux_steps = gradual_aux_steps
        self.fitter: AuxFitter | None = None
        self._stale = False  # masks changed since λ was last refined

    # ------------------------------------------------------------------------------------------ fitting
    @property
    def fitted(self) -> bool:
        return self.fitter is not None

    def _fit(self, steps: int) -> list[float]:
        """``steps`` aux steps (masked once pruning started); the first call initialises λ and γ."""
        if self.fitter is None:
            self._initialise()
        losses = self.fitter.run(self._stream, steps, masks=self._fit_masks(), progress=self.progress, desc="fit")
        if steps:
            self._stale = False
        return losses

    def _initialise(self) -> None:
        stats = self._statistics(kfac=self.init == "kfac")
        mean_diag = self.mean_diag(stats)
        damping = self._resolve_damping(mean_diag)
        log.info("mean diag F̂ %.4g, damping γ %.4g, init %s", mean_diag, damping, self.init)
        for i, block in local_blocks(self):
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
            backend=self._backend("kron_qv"),
            comm=self.comm,
            batch_size=self.curvature.batch_size,
            owners=self.owners,
        )

    def _fit_masks(self) -> list[Tensor] | None:
        if self.num_pruned() == 0:
            return None
        return [self.full_mask(i).to(self.blocks[i].dtype) for i in range(len(self.views))]

    # ------------------------------------------------------------------------------------------ pruning
    def _is_fitted(self) -> bool:
        return self.fitter is not None

    def _before_substep(self, substep: int) -> None:
        if self._stale and self.refine_steps:
            self.fitter.run(self._require_data("prune"), self.refine_steps, masks=self._fit_masks(), desc="refine")
        self._stale = False

    def _between_prunes(self) -> None:
        if self.fitter is not None and self.gradual_aux_steps:
            self.fitter.run(self._require_data("step"), self.gradual_aux_steps, masks=self._fit_masks(), desc="track")
            self._stale = False

    def _update(self, index: int, W: Tensor, prune: Tensor, keep: Tensor) -> None:
        super()._update(index, W, prune, keep)
        self._stale = True

    # ------------------------------------------------------------------------------------------ state
    def _state(self) -> dict:
        return {
            **self._curvature_state(),
            "blocks": self.blocks.state_dict(),
            "optimizer": self.fitter.optimizer.state_dict() if self.fitter is not None else None,
            "history": list(self.fitter.history) if self.fitter is not None else [],
            "stale": self._stale,
        }

    def _load_state(self, state: dict) -> None:
        if not state:
            return
        self._load_curvature_state(state)
        self.blocks.load_state_dict(state["blocks"])
        self._stale = state["stale"]
        if state["optimizer"] is None:
            self.fitter = None
            return
        if self.fitter is None:
            self.fitter = self._make_fitter()
        self.fitter.optimizer.load_state_dict(state["optimizer"])
        self.fitter.history[:] = state["history"]

    def _memory(self) -> dict[str, int]:
        usage = super()._memory()
        if self.fitter is not None:
            usage["optimizer"] = sum(
                t.numel() * t.element_size()
                for s in self.fitter.optimizer.state.values()
                for t in s.values()
                if hasattr(t, "numel")
            )
        return usage
