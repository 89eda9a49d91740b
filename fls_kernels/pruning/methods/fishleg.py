"""The FishLeg Surgeon: OBS pruning with a learned Kronecker inverse Fisher Q(λ) ≈ (F + γI)⁻¹."""

from __future__ import annotations

import logging
import math
from collections.abc import Iterator

import torch
from torch import Tensor

from fls_kernels import timing
from fls_kernels.curvature.captures import Capture
from fls_kernels.curvature.fitter import COMPILE_MODES, AuxFitter
from fls_kernels.curvature.likelihoods import Likelihood
from fls_kernels.pruning.checks import choice, flag, fraction, integer, positive
from fls_kernels.pruning.context import Context
from fls_kernels.pruning.methods.kron_obs import KronOBS, estimate_memory
from fls_kernels.pruning.pruner import Pruner

log = logging.getLogger("fls_kernels.prune")

INITS = ("diagonal", "identity", "kfac")
REFINE_FROM = ("current", "init")
#: what the aux steps fit once weights are pruned: Q on the alive weights, ≈ (M F M + γI)⁻¹ (read entry by entry by
#: the diagonal update), or Q on every weight at the current values, ≈ (F + γI)⁻¹ (read as factors by the column
#: solvers, which handle the masks exactly); "auto": the one the update reads
AUX_SPACES = ("auto", "alive", "full")
AUX_FISHERS = ("exact", "layerwise")
#: what the fit's validations measure of λ: its held-out aux loss, or (block by block) the held-out output error of
#: the block, or of the last block, after a trial prune of the block with it
VALIDATE_BY = ("aux", "prune", "prune-last")
#: probe scale of the alive weights outside the focus (``probe_focus``): their columns of Q still count, at 1%
FOCUS_BACKGROUND = 0.1


class FishLeg(KronOBS):
    """λ learnt by the auxiliary loss (:class:`~fls_kernels.curvature.fitter.AuxFitter`), warm-started from
    the diagonal, identity or K-FAC statistics, refined on the current masks before each sub-step.

    With ``aux_fisher="layerwise"`` the aux steps read F v from :class:`~fls_kernels.curvature.captures.Capture` s
    of the calibration batches (taken with the statistics, and again at the current weights before a refinement
    or a tracking step); they are not checkpointed, so a resumed fit captures afresh.

    Args: see :class:`FishLegPruner`.
    """

    name = "fls"
    quick_options = {"init_batches": 2, "refine_steps": 2}
    hidden_options = ("stat_batches",)  # set from init_batches

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
        refine_from: str = "current",
        gradual_aux_steps: int = 1,
        aux_fisher: str = "exact",
        aux_batches: int | None = None,
        aux_compile: str | None = None,
        validation: object = None,
        validate_every: int = 10,
        validation_probes: int = 2,
        validate_by: str = "aux",
        probe_focus: float | None = None,
        aux_space: str = "auto",
        learn_scaling: bool = True,
        balance_factors: bool = False,
        triangular_factors: bool = False,
        anneal_damping: float = 1.0,
        **kwargs,
    ) -> None:
        self.init = choice("init", init, INITS)
        self._aux_space = choice("aux_space", aux_space, AUX_SPACES)
        self.aux_fisher = choice("aux_fisher", aux_fisher, AUX_FISHERS)
        self.aux_batches = integer("aux_batches", aux_batches, 1) if aux_batches is not None else None
        self.aux_compile = None if aux_compile is None else choice("aux_compile", aux_compile, COMPILE_MODES)
        self.lr = positive("lr", lr)
        self.refine_steps = integer("refine_steps", refine_steps)
        self.refine_from = choice("refine_from", refine_from, REFINE_FROM)
        self.gradual_aux_steps = integer("gradual_aux_steps", gradual_aux_steps)
        init_batches = integer("init_batches", init_batches, 1)
        self.validation = _held_out(validation)
        self.validate_every = integer("validate_every", validate_every, 1)
        self.validation_probes = integer("validation_probes", validation_probes, 1)
        self.validate_by = choice("validate_by", validate_by, VALIDATE_BY)
        if self.validate_by != "aux" and self.validation is None:
            raise ValueError(f"validate_by: {validate_by!r} validates λ on held-out batches; pass validation=")
        self.probe_focus = None if probe_focus is None else fraction("probe_focus", probe_focus)
        self.learn_scaling = flag("learn_scaling", learn_scaling)
        self.balance_factors = flag("balance_factors", balance_factors)
        self.triangular_factors = flag("triangular_factors", triangular_factors)
        self.anneal_damping = positive("anneal_damping", anneal_damping)
        if self.anneal_damping < 1.0:
            raise ValueError(f"anneal_damping: expected a number ≥ 1, got {anneal_damping}")
        if self.anneal_damping != 1.0 and self.aux_compile is not None:
            raise ValueError("anneal_damping: γ changes every aux step of the fit; use aux_compile=None")
        super().__init__(likelihood, damping, stat_batches=init_batches, **kwargs)
        if self.aux_fisher == "layerwise" and self.label_samples != 1:
            raise ValueError("label_samples: the layer-wise captures hold one draw per batch; use 1 with it")
        self.precondition = precondition
        self.fitter: AuxFitter | None = None
        self._stale = False  # masks changed since λ was last refined
        self._captures: list[Capture] | None = None  # layer-wise mode: batches captured at the current weights

    def bind(self, ctx: Context) -> None:
        if self.aux_fisher == "layerwise" and ctx.mode.comm is not None:
            raise ValueError("aux_fisher: 'layerwise' runs in one process; use 'exact' with distributed=")
        if self.validation is not None and ctx.mode.comm is not None:
            raise ValueError("validation: early stopping on held-out batches runs in one process")
        if self.validate_by != "aux" and ctx.block is None:
            raise ValueError(
                f"validate_by: {self.validate_by!r} trial-prunes one block at a time; use it with sequential='blocks'"
            )
        if self.probe_focus is not None and ctx.mode.comm is not None:
            raise ValueError("probe_focus: focused probes are chosen in one process")
        super().bind(ctx)

    @property
    def trial_at(self) -> str | None:
        """Where the fit's trial prunes are scored: "block" ("prune"), "last" ("prune-last"), None ("aux")."""
        return {"aux": None, "prune": "block", "prune-last": "last"}[self.validate_by]

    @property
    def aux_space(self) -> str:
        """The space the aux steps fit in, "alive" or "full": ``aux_space`` with "auto" resolved by the update."""
        if self._aux_space != "auto":
            return self._aux_space
        return "alive" if self.update_rule == "diagonal" else "full"

    @property
    def _layerwise_fvp(self) -> bool:
        return self.aux_fisher == "layerwise"

    @property
    def fitted(self) -> bool:
        return self.fitter is not None

    def forget(self) -> None:
        self.fitter, self._captures, self._stale = None, None, False

    def fit(self, steps: int) -> list[float]:
        """``steps`` aux steps (masked once pruning started); the first call initialises λ and γ."""
        if self.fitter is None:
            self._initialise()
        stream = self._stream("fit", self.stat_batches) if steps else iter(())
        masks = self._masks()
        self._focus()
        losses = self.fitter.run(
            stream,
            steps,
            masks=masks,
            progress=self.ctx.progress,
            desc="fit",
            anneal=self.anneal_damping if steps and not self.fitter.history else 1.0,  # the first aux steps
            **self._early_stop(masks, steps, self.validate_by),
        )
        if steps:
            self._stale = False
        return losses

    def _initialise(self) -> None:
        self._start(self.anneal_damping)
        self.fitter = self._make_fitter()

    def _start(self, scale: float = 1.0) -> None:
        """λ from the ``init`` statistics of the model as it is now (masked, once pruning started), damped by
        ``scale``·γ (γ itself is resolved, and kept, at γ)."""
        captures = [] if self._layerwise_fvp else None
        stats = self.statistics(kfac=self.init == "kfac", captures=captures, diag=self.init == "diagonal")
        self._captures = captures
        mean_diag = self.mean_diag(stats)
        damping = self.resolve_damping(mean_diag)  # the first fit's γ, kept afterwards
        log.info("mean diag F̂ %.4g, damping γ %.4g, init %s", mean_diag, damping, self.init)
        damping *= scale
        for i, block in self.local_blocks():
            s = stats[i]
            if self.init == "diagonal":
                block.init_diagonal(s.diag, damping)
            elif self.init == "kfac":
                block.init_kfac(s.act_cov, s.grad_cov, damping)
            else:
                block.init_identity(1.0 / (mean_diag + damping))
            if self.balance_factors:
                block.balance_()

    def _make_fitter(self) -> AuxFitter:
        return AuxFitter(
            list(self.blocks),
            Capture.fvp if self._layerwise_fvp else self.curvature.fvp,
            self.damping,
            lr=self.lr,
            precondition=self.precondition,
            precision=self.precision,
            generator=self.generator,
            backend=self.ctx.backend_for("kron_qv"),
            reduction=self.ctx.mode.aux_reduction(self.curvature.batch_size),
            compile_mode=self.aux_compile,
            learn_scaling=self.learn_scaling,
            triangular=self.triangular_factors,
        )

    def _masks(self) -> list[Tensor] | None:
        """The aux steps' masks M: None before pruning and with ``aux_space="full"``."""
        if self.ctx.masks.num_pruned() == 0 or self.aux_space == "full":
            return None
        return [self.ctx.masks.full(i).to(self.blocks[i].dtype) for i in range(len(self.ctx.views))]

    def _stream(self, what: str, batches: int) -> Iterator[object]:
        """What the aux steps read: the attached batches, or (layer-wise) captures of ``batches`` of them at the
        current weights, ``aux_batches`` per step in a random order (all of them when None)."""
        stream = self.ctx.data.require(what)
        if not self._layerwise_fvp:
            return stream
        if self._captures is None:
            with timing.section("statistics"):
                self._captures = self.curvature.capture(stream, batches, generator=self.generator)
            log.info("captured %d batches for layer-wise FVPs (%.3g GB)", batches, self._nbytes() / 1e9)
        return _cycle(self._captures, self.aux_batches, self.generator)

    def _nbytes(self) -> int:
        return sum(c.nbytes() for c in self._captures or ())

    def _refine(self, what: str, steps: int, desc: str, batches: int | None = None, validated: bool = True) -> None:
        stream = self._stream(what, self.stat_batches if batches is None else batches)
        masks = self._masks()
        stop = self._early_stop(masks, steps) if validated else {}
        self._focus()
        self.fitter.run(stream, steps, masks=masks, desc=desc, **stop)
        self._stale = False

    def _focus(self) -> None:
        """With ``probe_focus`` f: the probe scale S of the next aux steps, 1 on the ⌈f·alive⌉ alive weights of each
        layer with the lowest OBS scores under λ now (those the next sub-steps remove first, whose Q e_q and Q_qq
        the OBS step reads), :data:`FOCUS_BACKGROUND` on the other alive weights and on a bias column."""
        if self.probe_focus is None or self.fitter is None:
            return
        scales = []
        with torch.no_grad():
            for i, view in enumerate(self.ctx.views):
                alive = self.ctx.masks.full(i)
                rho = self.scores(i, view.matrix(self.ctx.dtype), alive)  # [m, n_weight], +inf where pruned
                k = math.ceil(self.probe_focus * int(alive[:, : view.n_weight].sum()))
                block = self.blocks[i]
                scale = torch.full((block.m, block.n), FOCUS_BACKGROUND, dtype=block.dtype, device=block.device)
                focus = torch.zeros(rho.numel(), dtype=torch.bool, device=rho.device)
                focus[rho.flatten().topk(k, largest=False).indices] = True
                scale[:, : view.n_weight].masked_fill_(focus.view_as(rho), 1.0)
                scales.append(scale)
        self.fitter.probe_scale = scales

    def _early_stop(self, masks: list[Tensor] | None, steps: int, by: str = "aux") -> dict:
        """The fitter's early-stopping arguments: validation on the held-out batches (none without them), by the
        held-out aux loss or (``by="prune"``, ``"prune-last"``) by an output error after a trial prune."""
        if self.validation is None or not steps:
            return {}
        if by != "aux":
            return {"validate": self._trial_error, "validate_every": self.validate_every}
        return {"validate": lambda: self.aux_loss(self.validation, masks=masks), "validate_every": self.validate_every}

    def _trial_error(self) -> float:
        """The block's held-out output error after a trial prune with λ now (:attr:`Method.trial`), this method's
        own state put back as the block's weights and masks are."""
        if self.trial is None:
            raise RuntimeError(
                f"{self.ctx.owner}: validate_by={self.validate_by!r} needs the trial prune sequential='blocks' attaches"
            )
        stale, captures = self._stale, self._captures
        try:
            return self.trial()
        finally:
            self._stale, self._captures = stale, captures

    def aux_loss(
        self, batches: object, probes: int | None = None, seed: int = 0, masks: list[Tensor] | None = None
    ) -> float:
        """Held-out aux loss 𝒜(λ) on ``batches`` (:meth:`AuxFitter.evaluate`), on the current masks by default."""
        if self.fitter is None:
            raise RuntimeError(f"{self.ctx.owner}.aux_loss: call fit(loader) first")
        probes = self.validation_probes if probes is None else probes
        masks = self._masks() if masks is None else masks
        return self.fitter.evaluate(_held_out(batches), probes=probes, seed=seed, masks=masks)

    def before_substep(self, substep: int) -> None:
        if self._stale and self.refine_from == "init":  # restart from statistics of the masked model
            self._start()
            self.fitter.optimizer.state.clear()
        if self._stale and self.refine_steps:
            self._refine("prune", self.refine_steps, "refine")
        self._stale = False

    def between_prunes(self) -> None:
        if self.fitter is not None and self.gradual_aux_steps:
            self._captures = None  # training moved the weights: capture afresh for the tracking steps
            # a few steps per training step: not worth a validation each
            self._refine("step", self.gradual_aux_steps, "track", batches=self.gradual_aux_steps, validated=False)
        self._captures = None  # and drop them: the next training step moves the weights again

    def update(self, index: int, W: Tensor, prune: Tensor, keep: Tensor) -> Tensor | None:
        self._stale = True
        self._captures = None
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
        self._captures = None
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
        if self._captures:
            usage["captures"] = self._nbytes()
        return usage


def _held_out(batches: object) -> list[object] | None:
    """The held-out batches as a list (None stays None); TypeError/ValueError naming ``validation``."""
    if batches is None:
        return None
    if isinstance(batches, (str, bytes, torch.Tensor)) or not hasattr(batches, "__iter__"):
        raise TypeError(f"validation: expected an iterable of held-out batches, got {type(batches).__name__}")
    held = list(batches)
    if not held:
        raise ValueError("validation: expected at least one held-out batch")
    return held


def _cycle(captures: list[Capture], per_step: int | None, generator: torch.Generator) -> Iterator[Capture]:
    """Endless joins of ``per_step`` captures (all: the same join every time), reshuffled on every pass; a
    pass's remainder (len % per_step) is left out of that pass only."""
    if per_step is None or per_step >= len(captures):
        whole = Capture.join(captures)
        while True:
            yield whole
    while True:
        order = torch.randperm(len(captures), generator=generator, device=generator.device).tolist()
        for s in range(0, len(order) - per_step + 1, per_step):
            yield Capture.join([captures[i] for i in order[s : s + per_step]])


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
        refine_steps: aux steps (on the weights ``aux_space`` says) before each sub-step after the masks changed.
        refine_from: where those steps start: "current" (λ as the last sub-step left it: the paper's progressive
            assimilation, default) or "init" (λ re-initialised by ``init`` from statistics of the masked model,
            Adam's state reset — as K-FAC-OBS re-estimates, then ``refine_steps`` aux steps).
        gradual_aux_steps: aux steps on each training step that does not prune (gradual pruning with
            :meth:`step`): λ keeps tracking the fine-tuned model.
        aux_fisher: the F v of the aux steps: "exact" (default; F = (1/B) Σ J_bᵀ H_b J_b of the whole network, a
            forward-mode JVP and a VJP per step) or "layerwise" (F_ll v = (1/B) Σ_b ⟨g_b, v⟩ g_b per layer from
            the sampled-label gradients g_b of the ``init_batches`` captured calibration batches — the diagonal
            blocks the aux loss of a block-diagonal Q depends on, without the cross-layer noise, and no pass
            through the model per step; memory ≈ B·T·Σ(m + n) values: :mod:`fls_kernels.curvature.captures`).
        aux_batches: layer-wise: captured batches per aux step (None: all of them, a deterministic F̂).
        aux_compile: None (eager, default) or a ``torch.compile`` mode ("default", "reduce-overhead" — CUDA
            graphs —, "max-autotune") for the λ side of each aux step (Q products, their backward, residuals).
        validation: held-out batches (not in the calibration loader) for early stopping: the fit and every
            refinement validate λ by its held-out aux loss (:meth:`aux_loss`) at their start and every
            ``validate_every`` steps, and end at the best λ — never worse than where they started.
        validate_every: aux steps between validations.
        validation_probes: probes per held-out batch of each validation (the same probes every time: paired).
        validate_by: what the fit's validations measure: "aux" (default), the held-out aux loss; or "prune" (with
            ``sequential="blocks"`` and ``validation``), the block's relative output error on the held-out inputs,
            Σ‖y(θ′) − y(θ)‖² / Σ‖y(θ)‖², after a trial prune θ → θ′ to the block's target in the prune's sub-steps
            with λ as validated (no refinement between them), weights and masks put back — so the fit ends at the λ
            that prunes the held-out inputs best, its K-FAC (``init``) start included, one trial prune per
            validation; "prune-last": the same with y the last block's output, the pruned block's outputs carried
            through the blocks after it as they are (blocks that chain; the model's output error as the pruned blocks
            before it leave it, so λ is chosen by what its prune costs downstream). Refinements still validate by
            the aux loss.
        probe_focus: None (default: isotropic probes u ∼ 𝒩(0, I)) or f ∈ (0, 1]: before the fit and each
            refinement, the probes put unit variance on the f share of each layer's alive weights with the lowest
            OBS scores (the next candidates) and 1% on the rest, so that the fit weights Q's columns Q e_q by how
            soon the OBS step reads them (:mod:`fls_kernels.curvature.fitter`); the held-out aux loss then uses the
            same probes.
        aux_space: what the aux steps after a prune fit (and validate): "alive" (v = M ⊙ Q(M ⊙ u), so
            M Q M ≈ (M F M + γI)⁻¹, the restricted inverse the diagonal update reads entry by entry), "full" (every
            weight at its current value, zeros included: Q ≈ (F + γI)⁻¹ of the pruned model, the factors the
            "columns" and "adaptive" updates eliminate with, handling the masks exactly — as K-FAC re-estimates) or
            "auto" (default: "alive" for the diagonal update, "full" for the column updates).
        learn_scaling: whether the aux steps learn A, the elementwise scaling in Q (default), or keep it at its
            start (1 from K-FAC), so Q stays exactly Kronecker: what the column solvers read of it (they read A
            through its best rank-one fit).
        balance_factors: rescale R and L at every start to one scale (R ← cR, L ← L/c: Q unchanged), so that
            Adam's steps, about ``lr`` per entry whatever its size, move both factors alike (from K-FAC, R's entries
            can be 4–100× L's, so mostly L moves); False (default) keeps the start as ``init`` gives it.
        triangular_factors: the aux steps move only R's upper and L's lower triangle, so R and L stay the
            triangular (Cholesky) factors every ``init`` starts them as — the official FishLeg code's
            parameterisation; False (default): full R and L (:class:`~fls_kernels.curvature.fitter.AuxFitter`).
        anneal_damping: c ≥ 1. With c > 1 λ starts from ``init`` damped by c·γ, and the first ``fit`` that takes
            aux steps, if none ran before it, anneals their γ geometrically from c·γ down to γ
            (:meth:`AuxFitter.run`), fitting first where the aux problem is better conditioned; validations, later
            fits, refinements and restarts are at γ. 1 (default): no annealing.
        **kwargs: ``relative_damping``, ``label_samples``, ``seed``, ``inputs``, ``output``, ``fvp_chunk``,
            ``precision``, ``block_score``, ``update`` ("diagonal" default; "columns"; "adaptive", best on
            transformers with ``init="kfac"``, a small ``relative_damping`` such as 1e-4 and
            ``allocation="uniform"``), ``nm_select`` ("greedy" default; "exact": each N:M group's set by the loss of
            its elimination, adaptive update only; :class:`~fls_kernels.pruning.methods.kron_obs.KronOBS`), and the
            :class:`~fls_kernels.pruning.pruner.Pruner` arguments (pattern, schedule, substeps, layer_types,
            include, ignore, allocation, include_bias, backend, progress, distributed).

    Example:
        >>> pruner = FishLegPruner(model, likelihood="categorical")
        >>> pruner.fit(calib_loader, steps=2000)
        >>> pruner.prune(0.9, substeps=16)
    """

    method_class = FishLeg
    estimate_memory = staticmethod(estimate_memory)

    def aux_loss(self, batches: object, probes: int | None = None, seed: int = 0) -> float:
        """Held-out aux loss of λ, 𝒜 = E_u[½ vᵀ(F + γI)v − uᵀv], v = M ⊙ Q(M ⊙ u), on ``batches`` (batches the fit
        did not see), ``probes`` Gaussian probes per batch (default ``validation_probes``) drawn from ``seed`` —
        the same probes for the same seed, so two λ's compare paired; M: the current masks (all ones with
        ``aux_space="full"``). Lower is better; its
        minimum −½ tr((F + γI)⁻¹) is reached at Q = (F + γI)⁻¹."""
        return self.method.aux_loss(batches, probes, seed)
