"""FishLegPruner: Optimal-Brain-Surgeon pruning with a learned Kronecker inverse Fisher Q(λ) ≈ (F + γI)⁻¹.

score ρ_q = θ_q² / (2 Q_qq);   update θ ← M_new ⊙ (θ − Q z),  z = M_P ⊙ θ ⊘ diag(Q)
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Iterator, Sequence

import torch
from torch import Tensor, nn

from fls_kernels import ops
from fls_kernels.curvature.blocks import KronBlock
from fls_kernels.curvature.fisher import ModelCurvature, split_batch
from fls_kernels.curvature.fitter import AuxFitter
from fls_kernels.curvature.layers import SUPPORTED_LAYERS
from fls_kernels.curvature.likelihoods import Likelihood, get_likelihood
from fls_kernels.ops import PRECISIONS
from fls_kernels.pruning.base import BasePruner

log = logging.getLogger("fls_kernels.prune")

INITS = ("diagonal", "identity", "kfac")


def _positive(name: str, value: object, *, allow_zero: bool = False) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise TypeError(f"{name}: expected a finite number, got {value!r}")
    if value < 0 or (value == 0 and not allow_zero):
        raise ValueError(f"{name}: must be {'≥' if allow_zero else '>'} 0, got {value}")
    return float(value)


def _count(name: str, value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ValueError(f"{name}: expected an int ≥ 0, got {value!r}")
    return value


class FishLegPruner(BasePruner):
    """The FishLeg Surgeon.

    Args:
        model: the network, pruned in place.
        likelihood: "categorical" | "bernoulli" | "gaussian" or a :class:`Likelihood`: the model's output
            distribution, whose true Fisher Q approximates.
        damping: γ. None (default): ``relative_damping`` · mean(diag F̂), measured at the start of :meth:`fit`.
        relative_damping: the factor used when ``damping`` is None.
        init: "diagonal" (Q₀ = diag(F̂ + γ)⁻¹, default), "identity" (Q₀ = I / (mean diag F̂ + γ)) or "kfac".
        init_batches: batches of sampled-label gradients used for the initialisation statistics.
        lr: Adam learning rate on λ.
        precondition: precondition the aux residual by Q (recommended).
        refine_steps: masked aux steps before each sub-step after the masks changed (warm start).
        precision: GEMM mode of Q products on GPUs: "fp32" | "tf32" | "bf16".
        seed: seed of the probes and the sampled labels.
        progress: show tqdm progress bars.
        inputs: batch → (args, kwargs) for the model (default: tensor, first element, or mapping).
        output: model output → the tensor the likelihood reads (default: identity).
        layer_types, include, ignore, allocation, include_bias, backend: see :class:`BasePruner`.

    Example:
        >>> pruner = FishLegPruner(model, likelihood="categorical", damping=1e-3)
        >>> pruner.fit(calib_loader, steps=2000)
        >>> pruner.prune(0.9, substeps=16)
    """

    def __init__(
        self,
        model: nn.Module,
        likelihood: str | Likelihood = "categorical",
        damping: float | None = None,
        *,
        relative_damping: float = 1.0,
        init: str = "diagonal",
        init_batches: int = 8,
        lr: float = 1e-3,
        precondition: bool = True,
        refine_steps: int = 100,
        precision: str = "fp32",
        seed: int = 0,
        progress: bool = False,
        inputs: Callable[[object], tuple[tuple, dict]] = split_batch,
        output: Callable[[object], Tensor] | None = None,
        layer_types: Sequence[type[nn.Module]] = SUPPORTED_LAYERS,
        include: str | None = None,
        ignore: Sequence[str] = (),
        allocation: str = "global",
        include_bias: bool = True,
        backend: str | None = None,
    ) -> None:
        likelihood = get_likelihood(likelihood)
        if damping is not None:
            damping = _positive("damping", damping)
        relative_damping = _positive("relative_damping", relative_damping)
        if init not in INITS:
            raise ValueError(f"init: expected one of {INITS}, got {init!r}")
        if precision not in PRECISIONS:
            raise ValueError(f"precision: expected one of {PRECISIONS}, got {precision!r}")
        if isinstance(init_batches, bool) or not isinstance(init_batches, int) or init_batches < 1:
            raise ValueError(f"init_batches: expected an int ≥ 1, got {init_batches!r}")
        _positive("lr", lr)
        refine_steps = _count("refine_steps", refine_steps)
        super().__init__(
            model,
            layer_types=layer_types,
            include=include,
            ignore=ignore,
            allocation=allocation,
            include_bias=include_bias,
            backend=backend,
        )
        self.likelihood = likelihood
        self.damping = damping
        self.relative_damping = relative_damping
        self.init = init
        self.init_batches = init_batches
        self.lr = float(lr)
        self.precondition = precondition
        self.refine_steps = refine_steps
        self.precision = precision
        self.progress = progress
        self.curvature = ModelCurvature(model, self.views, likelihood, inputs=inputs, output=output)
        dtype = self._work_dtype()
        self.blocks = nn.ModuleList(KronBlock(v.m, v.n, dtype=dtype, device=self.device) for v in self.views)
        self.generator = torch.Generator(device=self.device)
        self.generator.manual_seed(seed)
        self.fitter: AuxFitter | None = None
        self._data: Iterator[object] | None = None
        self._stale = False  # masks changed since λ was last refined

    # ------------------------------------------------------------------------------------------ fitting
    @property
    def fitted(self) -> bool:
        return self.fitter is not None

    def fit(self, loader: object, steps: int = 2000) -> list[float]:
        """Learn Q ≈ (F + γI)⁻¹ with ``steps`` aux steps over ``loader`` (masked once pruning started).

        The first call measures the initialisation statistics (``init_batches`` batches), resolves the damping
        and initialises λ; later calls continue from the current λ. The loader is kept for the refinement
        steps of :meth:`prune`.

        Args:
            loader: re-iterable batches (tensors, (x, y, ...) tuples or mappings of model inputs).
            steps: aux steps.

        Returns:
            the aux loss of each step of this call.
        """
        self._check_alive()
        steps = _count("steps", steps)
        batches = self._batches(loader)
        if self.fitter is None:
            self._initialise(batches)
        self._data = batches
        losses = self.fitter.run(batches, steps, masks=self._fit_masks(), progress=self.progress, desc="fit")
        self._stale = False
        return losses

    def _initialise(self, batches: Iterator[object]) -> None:
        stats = self.curvature.statistics(
            batches, self.init_batches, kfac=self.init == "kfac", generator=self.generator
        )
        mean_diag = sum(float(s.diag.sum()) for s in stats) / sum(s.diag.numel() for s in stats)
        if self.damping is None:
            self.damping = self.relative_damping * mean_diag
            if not self.damping > 0:
                raise ValueError("damping: the measured Fisher is zero; pass an explicit damping")
        log.info("mean diag F̂ %.4g, damping γ %.4g, init %s", mean_diag, self.damping, self.init)
        for block, s in zip(self.blocks, stats):
            if self.init == "diagonal":
                block.init_diagonal(s.diag, self.damping)
            elif self.init == "kfac":
                block.init_kfac(s.act_cov, s.grad_cov, self.damping)
            else:
                block.init_identity(1.0 / (mean_diag + self.damping))
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
        )

    def _fit_masks(self) -> list[Tensor] | None:
        if self.num_pruned() == 0:
            return None
        return [self.full_mask(i).to(self.blocks[i].A.dtype) for i in range(len(self.views))]

    # ------------------------------------------------------------------------------------------ pruning
    def prune(self, sparsity, substeps: int = 1) -> float:
        if self.fitter is None:
            raise RuntimeError("FishLegPruner.prune: call fit(loader, steps) first to learn Q")
        return super().prune(sparsity, substeps)

    prune.__doc__ = BasePruner.prune.__doc__

    def _before_substep(self, substep: int) -> None:
        if self._stale and self.refine_steps:
            self.fitter.run(self._data, self.refine_steps, masks=self._fit_masks(), desc="refine")
        self._stale = False

    def _scores(self, index: int, W: Tensor, alive: Tensor) -> Tensor:
        block = self.blocks[index]
        with torch.no_grad():
            r, l = block.factor_diags()
            rho = ops.obs_scores(W, block.A.detach(), r, l, alive, backend=self.backend)
        return rho[:, : self.views[index].n_weight].contiguous()

    def _update(self, index: int, W: Tensor, prune: Tensor, keep: Tensor) -> None:
        block = self.blocks[index]
        with torch.no_grad():
            G_R, G_L = block.grams()
            r, l = block.factor_diags()
            ops.surgeon_update_(
                W, block.A.detach(), G_R, G_L, r, l, prune, keep, precision=self.precision, backend=self.backend
            )
        self._stale = True

    # ------------------------------------------------------------------------------------------ state
    def _state(self) -> dict:
        return {
            "blocks": self.blocks.state_dict(),
            "optimizer": self.fitter.optimizer.state_dict() if self.fitter is not None else None,
            "history": list(self.fitter.history) if self.fitter is not None else [],
            "damping": self.damping,
            "generator": self.generator.get_state(),
            "stale": self._stale,
        }

    def _load_state(self, state: dict) -> None:
        if not state:
            return
        self.blocks.load_state_dict(state["blocks"])
        self.damping = state["damping"]
        self.generator.set_state(state["generator"])
        self._stale = state["stale"]
        if state["optimizer"] is not None:
            if self.fitter is None:
                self.fitter = self._make_fitter()
            self.fitter.optimizer.load_state_dict(state["optimizer"])
            self.fitter.history[:] = state["history"]
        else:
            self.fitter = None
