"""Learning λ: stochastic minimisation of the auxiliary (Legendre–Fenchel) loss with Gaussian probes.

    𝒜(λ; u) = ½ (Qu)ᵀ F_γ (Qu) − uᵀ Q u,   u ∼ 𝒩(0, I),   minimised by Q = F_γ⁻¹ at −½ tr(F_γ⁻¹).

One step: v = M ⊙ Q(M ⊙ u) (graph to λ); r = M ⊙ (F v + γ v − u) / (‖v‖‖u‖) (exact FVP, no graph);
optionally r ← M ⊙ Q r (preconditioning, no graph); surrogate Σ ⟨r, v⟩ backpropagated; Adam on λ.
M is the mask of alive weights (all ones before pruning), so the fit targets the kept subspace.

Focused probes u = S ⊙ z, z ∼ 𝒩(0, I) (:attr:`AuxFitter.probe_scale`, S diagonal):
E𝒜 = ½ ‖F_γ^½ (Q − F_γ⁻¹) S‖²_F − ½ tr(S F_γ⁻¹ S), so the fit weights Q's columns Q e_q by S_q² — the same minimiser
F_γ⁻¹ where Q can reach it, and otherwise the columns of the coordinates with large S fitted first.

A step makes no host synchronisation of its own: the probes of all blocks are drawn in one call, the Q products
of all blocks run as grouped launches (``kron_qv_grouped``, forward and backward), and the loss and a finiteness
flag stay on the device; :meth:`AuxFitter.run` reads them back every ``check_every`` steps and, on divergence,
returns λ, its optimizer state and the probe RNG to the last check.
"""

from __future__ import annotations

import copy
import logging
import math
from collections.abc import Callable, Iterator, Sequence

import torch
from torch import Tensor, nn

from fls_kernels import backends, ops, timing
from fls_kernels.curvature.blocks import KronBlock
from fls_kernels.curvature.reduction import AuxReduction
from fls_kernels.data import check_finite

log = logging.getLogger("fls_kernels.fit")

COMPILE_MODES = ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")


class AuxFitter:
    """Adam on λ of every block against the auxiliary loss.

    Args:
        blocks: the Q blocks, one per layer (sharded: a :class:`RemoteBlock` for layers other ranks own).
        fvp: (batch, [v per block]) → [F v per block], the exact Fisher-vector product.
        damping: γ.
        lr: Adam learning rate (1e-3 is the robust default from a data-driven start).
        precondition: apply Q to the residual before backpropagation (a Newton-like step on λ).
        precision: GEMM mode of the Q products.
        generator: RNG of the probes (the same seed on every rank).
        backend: ops backend preferred for the Q products (None: automatic; one lacking the grouped product
            leaves that to automatic selection).
        reduction: how the step's probes, products and λ gradients combine over processes (default: one
            process); see :mod:`fls_kernels.curvature.reduction`. The step is that of one process on the union
            of every rank's batch.
        learn_scaling: whether the steps move A, Q's elementwise scaling, with R and L (default); False keeps A where
            it starts (1 from K-FAC), so that Q stays exactly G_R ⊗ G_L — all the column solvers read of it.
        triangular: whether the steps move only R's upper and L's lower triangle (their other gradients zeroed
            before Adam): from any ``init`` (K-FAC gives the Cholesky factors, identity and diagonal I) R and L stay
            the triangular factors of G_R = RᵀR and G_L = LLᵀ, one λ per Q up to signs — the official FishLeg code's
            parameterisation; False (default): full R and L, whose rotations R → OR leave Q unchanged.
        compile_mode: None (eager) or a ``torch.compile`` mode ("default", "reduce-overhead": CUDA graphs,
            "max-autotune") for the λ side of the step (the Q products with their backward, the residuals); the
            FVP through the model is not compiled.
        check_every: steps of :meth:`run` between reads of the loss and finiteness flag to the host (None: 1 on
            the CPU, where a read costs nothing, 16 on accelerators; distributed reductions check every step).
    """

    def __init__(
        self,
        blocks: list[KronBlock],
        fvp: Callable[[object, list[Tensor]], list[Tensor]],
        damping: float,
        *,
        lr: float = 1e-3,
        precondition: bool = True,
        precision: str = "fp32",
        generator: torch.Generator | None = None,
        backend: str | None = None,
        reduction: AuxReduction | None = None,
        check_every: int | None = None,
        compile_mode: str | None = None,
        learn_scaling: bool = True,
        triangular: bool = False,
    ) -> None:
        if not (isinstance(lr, (int, float)) and math.isfinite(lr) and lr > 0):
            raise ValueError(f"lr: expected a positive finite number, got {lr!r}")
        if check_every is not None and (isinstance(check_every, bool) or not isinstance(check_every, int)):
            raise TypeError(f"check_every: expected an int or None, got {type(check_every).__name__}")
        if not isinstance(learn_scaling, bool):
            raise TypeError(f"learn_scaling: expected a bool, got {type(learn_scaling).__name__}")
        if not isinstance(triangular, bool):
            raise TypeError(f"triangular: expected a bool, got {type(triangular).__name__}")
        if check_every is not None and check_every < 1:
            raise ValueError(f"check_every: expected a positive int, got {check_every}")
        self.blocks = blocks
        self.fvp = fvp
        self.damping = float(damping)
        self.precondition = precondition
        self.precision = precision
        self.generator = generator
        self.backend = backends.preferred(backend, "kron_qv_grouped")
        self.reduction = reduction if reduction is not None else AuxReduction()
        self.owned = [isinstance(b, KronBlock) for b in blocks]
        self.learn_scaling = learn_scaling
        owned = [b for b in blocks if isinstance(b, KronBlock)]
        learnt = [(b.R, b.L, b.A) if learn_scaling else (b.R, b.L) for b in owned]
        self.params = [p for group in learnt for p in group]
        #: (factor, upper) of every owned block's R and L when ``triangular`` (else none): the triangle its steps keep
        self._triangles = [(f, up) for b in owned for f, up in ((b.R, True), (b.L, False))] if triangular else []
        # a rank owning no block (sharded, more ranks than layers) still steps in lockstep with the others
        self.optimizer = torch.optim.Adam(self.params or [nn.Parameter(torch.zeros(0))], lr=lr)
        device = blocks[0].device if blocks else torch.device("cpu")
        if check_every is None:
            check_every = 1 if device.type == "cpu" else 16
        self.check_every = 1 if self.reduction.checks_each_step else check_every
        if compile_mode is not None and compile_mode not in COMPILE_MODES:
            raise ValueError(f"compile_mode: expected None or one of {COMPILE_MODES}, got {compile_mode!r}")
        self.compile_mode = compile_mode
        self._q_side, self._residual_side = self._q_products, self._residuals
        if compile_mode is not None:  # the λ side of the step; the FVP through the model stays as it is
            self._q_side = torch.compile(self._q_products, mode=compile_mode, dynamic=False)
            self._residual_side = torch.compile(self._residuals, mode=compile_mode, dynamic=False)
        #: per block, S [m, n] ≥ 0 of the probes u = S ⊙ z (None: S = 1, isotropic); the steps and
        #: :meth:`evaluate` both draw through it
        self.probe_scale: list[Tensor] | None = None
        #: aux loss 𝒜 of every step taken, in order (steps of a :meth:`run` appear at its checks).
        self.history: list[float] = []
        #: (step, held-out aux loss) of every validation of an early-stopped :meth:`run`.
        self.validation: list[tuple[int, float]] = []

    def step(self, batch: object, masks: list[Tensor] | None = None) -> float:
        """One aux step on ``batch``, checked at once; ``masks`` ([m, n] bool per block) restrict it to alive
        weights.

        Returns:
            the sampled aux loss 𝒜 of this step (before the update).

        Raises:
            FloatingPointError: the loss or residual is not finite; λ and the probe RNG are left as they were.
        """
        loss = float(self._step(batch, masks, check=True))
        self.history.append(loss)
        return loss

    def _step(self, batch: object, masks: list[Tensor] | None, check: bool) -> Tensor:
        """One step; returns 𝒜 on the device, or NaN when the step diverged (``check``: raise before λ moves)."""
        red = self.reduction
        rng = self.generator.get_state() if self.generator is not None else None
        us, vs, grams, fvs, rows = [], [], [], [], 0
        try:
            with red.attempt():
                rows = red.rows(batch)
                us, vs, grams = self._probe(masks)
            if not us:  # the probe failed on this rank: shapes for the other ranks' collectives
                us = [torch.zeros(b.m, b.n, device=b.device, dtype=b.dtype) for b in self.blocks]
                vs = [None] * len(us)
            vs = red.gather_probes(us, vs)
            with red.attempt(), timing.section("fvp"), torch.no_grad():
                fvs = self.fvp(batch, [v.detach() if v is not None else torch.zeros_like(u) for u, v in zip(us, vs)])
            if len(fvs) != len(us):
                fvs = [torch.zeros_like(u) for u in us]
            fvs, scale = red.reduce_products(fvs, rows)
            loss = torch.zeros(())  # what a rank whose work failed (recorded by attempt()) passes to the collectives
            with red.attempt(), timing.section("q_products"):
                if any(vs[i] is None for i, o in enumerate(self.owned) if o):
                    raise RuntimeError("the probe of this step failed")
                loss, surrogate = self._surrogate(us, vs, grams, fvs, masks, scale)
                if check and not bool(torch.isfinite(loss)):
                    raise FloatingPointError(
                        f"aux loss diverged at step {len(self.history)} (loss {float(loss)}); lower lr or raise damping"
                    )
                self.optimizer.zero_grad(set_to_none=True)
                surrogate.backward()
            loss, grads = red.reduce_gradients(self.params, rows, loss)
        except BaseException:
            if rng is not None:
                self.generator.set_state(rng)
            self.optimizer.zero_grad(set_to_none=True)
            raise
        if grads is not None:
            for p, g in zip(self.params, grads):
                p.grad = g
        for factor, upper in self._triangles:
            if factor.grad is not None:
                factor.grad = factor.grad.triu() if upper else factor.grad.tril()
        self.optimizer.step()
        return torch.as_tensor(loss)

    def q_work(self, masks: list[Tensor] | None = None) -> None:
        """The λ side of one step with no FVP, as a step runs it: probes u, v = M ⊙ Q u with its graph to λ
        (grouped, or through the factors where cheaper), Q applied to a residual (here v, no graph), and the
        backward of Σ ⟨Q v, v⟩ into λ's gradients — what a step costs beside its pass through the model, for
        timing. λ and its optimizer do not move; the gradients are overwritten; the probe RNG advances."""
        owned = [b for b, o in zip(self.blocks, self.owned) if o]
        for p in self.params:
            p.grad = None
        _, vs, grams = self._probe(masks)
        vs = [v for v in vs if v is not None]
        with torch.no_grad():
            detached = [None if g is None else (g[0].detach(), g[1].detach()) for g, o in zip(grams, self.owned) if o]
            rs = self._qv([v.detach() for v in vs], owned, detached)
        sum((r * v).sum() for r, v in zip(rs, vs)).backward()

    def _probe(self, masks: list[Tensor] | None) -> tuple[list[Tensor], list[Tensor | None], list]:
        """u ∼ 𝒩(0, I) (masked) for every block, drawn in one call; v = M ⊙ Q u with its graph to λ for the owned
        ones (:meth:`_q_products`: one grouped product, wide blocks through their factors)."""
        with timing.section("q_products"):
            us = self._draw(self.generator, masks)
            owned = [i for i, o in enumerate(self.owned) if o]
            grams: list = [None] * len(us)
            vs: list[Tensor | None] = [None] * len(us)
            if owned:
                products, pairs = self._q_side([us[i] for i in owned], _pick(masks, owned))
                for i, v, pair in zip(owned, products, pairs):
                    vs[i], grams[i] = v, pair
        return us, vs, grams

    def _draw(self, generator: torch.Generator | None, masks: list[Tensor] | None) -> list[Tensor]:
        """M ⊙ S ⊙ z, z ∼ 𝒩(0, I) of every block's shape, drawn from ``generator`` in one call (S:
        :attr:`probe_scale`)."""
        sizes = [b.m * b.n for b in self.blocks]
        first = self.blocks[0]
        flat = torch.randn(sum(sizes), generator=generator, device=first.device, dtype=first.dtype)
        us = [u.view(b.m, b.n) for u, b in zip(flat.split(sizes), self.blocks)]
        if self.probe_scale is not None:
            us = [u * scale for u, scale in zip(us, self.probe_scale)]
        return us if masks is None else [u * mask for u, mask in zip(us, masks)]

    def _q_products(self, us: list[Tensor], masks: list[Tensor] | None) -> tuple[list[Tensor], list]:
        """([M ⊙ Q u], [(G_R, G_L) or None]) of the owned blocks, with the graph to λ (compiled with
        ``compile_mode``); None: a block whose products are cheaper through its factors (:func:`factored`)."""
        blocks = [b for b, o in zip(self.blocks, self.owned) if o]
        grams = [None if factored(b.m, b.n) else b.grams() for b in blocks]
        vs = self._qv(us, blocks, grams)
        return [v * m for v, m in zip(vs, masks)] if masks is not None else vs, grams

    def _qv(self, Vs: list[Tensor], blocks: list[KronBlock], grams: list) -> list[Tensor]:
        """[Q_i V_i] of ``blocks`` (differentiable in λ when grad mode is on): the blocks with Gram factors in one
        grouped product, those without (None) as A ⊙ Rᵀ((R (A ⊙ V)) L)Lᵀ."""
        grad = torch.is_grad_enabled()
        out: list[Tensor | None] = [None] * len(Vs)
        grouped = [k for k, g in enumerate(grams) if g is not None]
        if grouped:
            products = ops.kron_qv_grouped(
                [Vs[k] for k in grouped],
                [blocks[k].A if grad and self.learn_scaling else blocks[k].A.detach() for k in grouped],
                [grams[k][0] for k in grouped],
                [grams[k][1] for k in grouped],
                precision=self.precision,
                backend=self.backend,
            )
            for k, y in zip(grouped, products):
                out[k] = y
        for k, g in enumerate(grams):
            if g is None:
                b = blocks[k]
                R, L = (b.R, b.L) if grad else (b.R.detach(), b.L.detach())
                A = b.A if grad and self.learn_scaling else b.A.detach()
                out[k] = A * (R.mT @ ((R @ (A * Vs[k])) @ L) @ L.mT)
        return out

    def _surrogate(self, us, vs, grams, fvs, masks, scale_fv: float = 1.0) -> tuple[Tensor, Tensor]:
        """(𝒜 over the owned blocks, the surrogate Σ ⟨M ⊙ Q r, v⟩ / (‖v‖‖u‖) to backpropagate into λ), both on
        the device; 𝒜 is NaN when a residual is not finite.

        ``vs`` must be complete (other ranks' blocks detached) for the norm; ``fvs`` is F v · ``scale_fv``.
        """
        owned = [i for i, o in enumerate(self.owned) if o]
        if scale_fv != 1.0:
            fvs = [f * scale_fv for f in fvs]
        with torch.no_grad():
            loss, residuals, scale = self._residual_side(
                us,
                [v.detach() for v in vs],
                [None if grams[i] is None else (grams[i][0].detach(), grams[i][1].detach()) for i in owned],
                [fvs[i] for i in owned],
                _pick(masks, owned),
            )
        surrogate = sum((r * scale * vs[i]).sum() for r, i in zip(residuals, owned))
        return loss, surrogate if owned else torch.zeros((), requires_grad=True)

    def _residuals(
        self, us: list[Tensor], vs: list[Tensor], grams: list, fvs: list[Tensor], masks: list[Tensor] | None
    ) -> tuple[Tensor, list[Tensor], Tensor]:
        """(𝒜, [M ⊙ Q (F_γ v − u)] of the owned blocks, 1 / (‖v‖‖u‖)), no graph (compiled with ``compile_mode``).

        ``us`` and ``vs``: every block (for the norm); ``grams``, ``fvs``, ``masks``: the owned blocks."""
        owned = [i for i, o in enumerate(self.owned) if o]
        blocks = [self.blocks[i] for i in owned]
        residuals, terms = [], []
        for k, i in enumerate(owned):
            v = vs[i]
            fgv = fvs[k] + self.damping * v
            terms.append(0.5 * (v * fgv).sum() - (us[i] * v).sum())
            res = fgv - us[i]
            residuals.append(res * masks[k] if masks is not None else res)
        if self.precondition and owned:
            residuals = self._qv(residuals, blocks, grams)
            if masks is not None:
                residuals = [r * m for r, m in zip(residuals, masks)]
        first = self.blocks[0]
        loss = torch.stack(terms).sum() if terms else torch.zeros((), device=first.device, dtype=first.dtype)
        # a non-finite residual (or an overflowing one) makes its sum non-finite: fold that into the loss
        check = torch.stack([r.sum() for r in residuals]).sum() if residuals else torch.zeros_like(loss)
        loss = torch.where(torch.isfinite(check), loss, torch.full_like(loss, float("nan")))
        norm = torch.sqrt(sum(v.square().sum() for v in vs)) * torch.sqrt(sum(u.square().sum() for u in us))
        scale = torch.where(norm > 0, 1.0 / norm, torch.ones_like(norm))
        return loss, residuals, scale

    def run(
        self,
        batches: Iterator[object],
        steps: int,
        *,
        masks: list[Tensor] | None = None,
        progress: bool = False,
        desc: str = "aux",
        log_every: int = 100,
        validate: Callable[[], float] | None = None,
        validate_every: int = 10,
        anneal: float = 1.0,
    ) -> list[float]:
        """``steps`` aux steps over ``batches``; logs the running aux loss. Returns this run's losses.

        The losses are read back every :attr:`check_every` steps. A non-finite step raises FloatingPointError
        naming its batch where that is the cause; λ, its optimizer state and the probe RNG are then those of the
        last check (the steps since are dropped, at most ``check_every`` − 1 good ones).

        Early stopping: with ``validate`` (λ → held-out aux loss, e.g. :meth:`evaluate` on held-out batches), λ is
        validated before the first step, at the first check after every ``validate_every`` steps and after the
        last, and the run ends at the best of them — never worse, on held-out data, than where it started.
        :attr:`validation` records (step, held-out loss) of every check.

        Annealing: with ``anneal`` c > 1, step t of n takes γ_t = γ · c^(1 − t/(n − 1)), from c·γ down to γ (the
        aux problem is better conditioned at larger γ); the validations, and γ after the run, stay at γ."""
        if isinstance(anneal, bool) or not isinstance(anneal, (int, float)):
            raise TypeError(f"anneal: expected a number, got {type(anneal).__name__}")
        if not (math.isfinite(anneal) and anneal >= 1.0):
            raise ValueError(f"anneal: expected a finite number ≥ 1, got {anneal!r}")
        if anneal != 1.0 and self.compile_mode is not None:
            raise ValueError("anneal: γ changes every step, which a compiled step would recompile for")
        from tqdm.auto import tqdm

        target = self.damping
        try:
            start = len(self.history)
            every = self.check_every
            ema: float | None = None
            pending: list[tuple[Tensor, object, int]] = []
            mark = self.snapshot() if every > 1 else None
            best = self._validate(validate, start)
            checked = 0
            bar = tqdm(range(steps), desc=desc, disable=not progress, leave=False)
            for t in bar:
                self.damping = target * anneal ** (1.0 - t / (steps - 1)) if steps > 1 and anneal != 1.0 else target
                batch = next(batches)
                index = getattr(batches, "last_index", t)
                try:
                    loss = self._step(batch, masks, check=every == 1)
                except FloatingPointError:
                    check_finite(batch, index)  # name the batch if it is the cause
                    raise
                pending.append((loss, batch, index))
                if len(pending) < every and t + 1 < steps:
                    continue
                values = torch.stack([p[0] for p in pending]).tolist()  # the one read back of these steps
                bad = next((k for k, v in enumerate(values) if not math.isfinite(v)), None)
                if bad is not None:
                    self.restore(mark)
                    check_finite(pending[bad][1], pending[bad][2])
                    raise FloatingPointError(
                        f"aux loss diverged at step {len(self.history) + bad} (loss {values[bad]}); lower lr or raise "
                        f"damping (λ is back at step {len(self.history)})"
                    )
                pending.clear()
                for value in values:
                    self.history.append(value)
                    ema = value if ema is None else 0.95 * ema + 0.05 * value
                    done = len(self.history) - start
                    if done % log_every == 0 or done == steps:
                        log.info("%s step %d/%d: aux loss %.6g (running %.6g)", desc, done, steps, value, ema)
                        bar.set_postfix(aux=f"{ema:.4g}")
                if every > 1:
                    mark = self.snapshot()
                done = len(self.history) - start
                if validate is not None and (done - checked >= validate_every or done == steps):
                    checked, self.damping = done, target  # the next step sets its own γ again
                    best = min(best, self._validate(validate, len(self.history)), key=lambda c: c[0])
            if best is not None and best[1] is not None:
                self.restore(best[1])
                log.info("%s: held-out aux loss %.6g, best at step %d", desc, best[0], best[2])
            return self.history[start:]
        finally:
            self.damping = target

    def _validate(self, validate: Callable[[], float] | None, step: int) -> tuple[float, tuple | None, int] | None:
        """(held-out loss, snapshot, step) of λ now, recorded in :attr:`validation`; None without ``validate``."""
        if validate is None:
            return None
        value = float(validate())
        self.validation.append((step, value))
        return (value if math.isfinite(value) else math.inf), self.snapshot(), step

    @torch.no_grad()
    def evaluate(
        self, batches: Sequence[object], *, probes: int = 1, seed: int = 0, masks: list[Tensor] | None = None
    ) -> float:
        """Held-out aux loss of the current λ: the mean over ``batches`` and ``probes`` probes per batch of
        𝒜(λ; u) = ½ vᵀ(F + γI)v − uᵀv, v = M ⊙ Q(M ⊙ u), u = S ⊙ z, z ∼ 𝒩(0, I) (:attr:`probe_scale`) — λ, its
        optimizer and the step RNG untouched.

        The probes come from their own generator seeded with ``seed``, so two evaluations with the same batches
        and seed see the same probes: the difference between two λ's is paired (common random numbers). One
        process only (the held-out batches are this process's).

        Raises:
            ValueError: no batches, ``probes`` < 1, or blocks held by other ranks (sharded).
        """
        if not all(self.owned) or self.reduction.checks_each_step:
            raise ValueError("evaluate: the held-out aux loss is computed in one process (not distributed)")
        if isinstance(probes, bool) or not isinstance(probes, int) or probes < 1:
            raise ValueError(f"probes: expected a positive int, got {probes!r}")
        batches = list(batches)
        if not batches:
            raise ValueError("batches: expected at least one held-out batch")
        device = self.blocks[0].device
        generator = torch.Generator(device=device).manual_seed(seed)
        total = torch.zeros((), dtype=torch.float64, device=device)
        for batch in batches:
            for _ in range(probes):
                us = self._draw(generator, masks)
                vs, _ = self._q_products(us, masks)
                with timing.section("fvp"):
                    fvs = self.fvp(batch, vs)
                for u, v, fv in zip(us, vs, fvs):
                    total += (0.5 * (v * (fv + self.damping * v)).sum() - (u * v).sum()).double()
        return float(total) / (len(batches) * probes)

    def snapshot(self) -> tuple[list[Tensor], dict, Tensor | None]:
        """λ, the optimizer state and the probe RNG now (device copies; no host read), for :meth:`restore`."""
        with torch.no_grad():
            params = [p.detach().clone() for p in self.params]
        rng = self.generator.get_state() if self.generator is not None else None
        return params, copy.deepcopy(self.optimizer.state_dict()), rng

    def restore(self, mark: tuple[list[Tensor], dict, Tensor | None]) -> None:
        """Return λ, the optimizer state and the probe RNG to a :meth:`snapshot`."""
        params, optimizer, rng = mark
        with torch.no_grad():
            for p, saved in zip(self.params, params):
                p.copy_(saved)
        self.optimizer.load_state_dict(optimizer)
        self.optimizer.zero_grad(set_to_none=True)
        if rng is not None:
            self.generator.set_state(rng)


def factored(m: int, n: int) -> bool:
    """Whether an aux step on an [m, n] block costs fewer multiply-adds through its factors R, L than through its
    Gram factors: with P = m²n + mn², forming G_R = RᵀR, G_L = LLᵀ and their backward costs 2(m³ + n³) and the
    step's products 4P, the factored products 8P — fewer when m² − 3mn + n² > 0 (n/m > 2.62 or < 0.38, e.g. a
    3×3 convolution, n = 9·c_in)."""
    return m * m - 3 * m * n + n * n > 0


def _pick(masks: list[Tensor] | None, index: list[int]) -> list[Tensor] | None:
    return None if masks is None else [masks[i] for i in index]
