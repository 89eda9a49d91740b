"""Learning λ: stochastic minimisation of the auxiliary (Legendre–Fenchel) loss with Gaussian probes.

    𝒜(λ; u) = ½ (Qu)ᵀ F_γ (Qu) − uᵀ Q u,   u ∼ 𝒩(0, I),   minimised by Q = F_γ⁻¹ at −½ tr(F_γ⁻¹).

One step: v = M ⊙ Q(M ⊙ u) (graph to λ); r = M ⊙ (F v + γ v − u) / (‖v‖‖u‖) (exact FVP, no graph);
optionally r ← M ⊙ Q r (preconditioning, no graph); surrogate Σ ⟨r, v⟩ backpropagated; Adam on λ.
M is the mask of alive weights (all ones before pruning), so the fit targets the kept subspace.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Iterator

import torch
from torch import Tensor, nn

from fls_kernels import timing
from fls_kernels.curvature.blocks import KronBlock
from fls_kernels.curvature.reduction import AuxReduction
from fls_kernels.data import check_finite

log = logging.getLogger("fls_kernels.fit")


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
        backend: ops backend of the Q products (None: automatic).
        reduction: how the step's probes, products and λ gradients combine over processes (default: one
            process); see :mod:`fls_kernels.curvature.reduction`. The step is that of one process on the union
            of every rank's batch.
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
    ) -> None:
        if not (isinstance(lr, (int, float)) and math.isfinite(lr) and lr > 0):
            raise ValueError(f"lr: expected a positive finite number, got {lr!r}")
        self.blocks = blocks
        self.fvp = fvp
        self.damping = float(damping)
        self.precondition = precondition
        self.precision = precision
        self.generator = generator
        self.backend = backend
        self.reduction = reduction if reduction is not None else AuxReduction()
        self.owned = [isinstance(b, KronBlock) for b in blocks]
        self.params = [p for b in blocks for p in b.parameters()]
        # a rank owning no block (sharded, more ranks than layers) still steps in lockstep with the others
        self.optimizer = torch.optim.Adam(self.params or [nn.Parameter(torch.zeros(0))], lr=lr)
        #: aux loss 𝒜 of every step taken, in order.
        self.history: list[float] = []

    def step(self, batch: object, masks: list[Tensor] | None = None) -> float:
        """One aux step on ``batch``; ``masks`` ([m, n] bool per block) restrict it to alive weights.

        Returns:
            the sampled aux loss 𝒜 of this step (before the update).

        Raises:
            FloatingPointError: the loss or residual is not finite; λ and the probe RNG are left as they were.
        """
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
            loss = 0.0
            with red.attempt(), timing.section("q_products"):
                if any(vs[i] is None for i, o in enumerate(self.owned) if o):
                    raise RuntimeError("the probe of this step failed")
                loss, surrogate = self._surrogate(us, vs, grams, fvs, masks, scale)
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
        self.optimizer.step()
        self.history.append(loss)
        return loss

    def _probe(self, masks: list[Tensor] | None) -> tuple[list[Tensor], list[Tensor | None], list]:
        """u ∼ 𝒩(0, I) (masked) for every block, v = M ⊙ Q u with its graph to λ for the owned ones."""
        us, vs, grams = [], [], []
        with timing.section("q_products"):
            for i, block in enumerate(self.blocks):
                u = torch.randn(block.m, block.n, generator=self.generator, device=block.device, dtype=block.dtype)
                if masks is not None:
                    u = u * masks[i]
                v, g = None, None
                if self.owned[i]:
                    g = block.grams()
                    v = block.qv(u, grams=g, precision=self.precision, backend=self.backend)
                    if masks is not None:
                        v = v * masks[i]
                us.append(u)
                vs.append(v)
                grams.append(g)
        return us, vs, grams

    def _surrogate(self, us, vs, grams, fvs, masks, scale_fv: float = 1.0) -> tuple[float, Tensor]:
        """(𝒜 over the owned blocks, the surrogate Σ ⟨M ⊙ Q r, v⟩ / (‖v‖‖u‖) to backpropagate into λ).

        ``vs`` must be complete (other ranks' blocks detached) for the norm; ``fvs`` is F v · ``scale_fv``.
        """
        owned = [i for i, o in enumerate(self.owned) if o]
        with torch.no_grad():
            residuals, loss = {}, 0.0
            for i in owned:
                v = vs[i].detach()
                fgv = fvs[i] * scale_fv + self.damping * v
                loss += 0.5 * float((v * fgv).sum()) - float((us[i] * v).sum())
                res = fgv - us[i]
                if masks is not None:
                    res = res * masks[i]
                if self.precondition:
                    G_R, G_L = grams[i]
                    res = self.blocks[i].qv(
                        res, grams=(G_R.detach(), G_L.detach()), precision=self.precision, backend=self.backend
                    )
                    if masks is not None:
                        res = res * masks[i]
                residuals[i] = res
            norm = math.sqrt(sum(float(v.detach().square().sum()) for v in vs)) * math.sqrt(
                sum(float(u.square().sum()) for u in us)
            )
        if not math.isfinite(loss) or not all(bool(torch.isfinite(r).all()) for r in residuals.values()):
            raise FloatingPointError(
                f"aux loss diverged at step {len(self.history)} (loss {loss}); lower lr or raise damping"
            )
        scale = 1.0 / norm if norm > 0 else 1.0
        surrogate = sum((residuals[i] * scale * vs[i]).sum() for i in owned)
        return loss, surrogate if owned else torch.zeros((), requires_grad=True)

    def run(
        self,
        batches: Iterator[object],
        steps: int,
        *,
        masks: list[Tensor] | None = None,
        progress: bool = False,
        desc: str = "aux",
        log_every: int = 100,
    ) -> list[float]:
        """``steps`` aux steps over ``batches``; logs the running aux loss. Returns this run's losses."""
        from tqdm.auto import tqdm

        start = len(self.history)
        ema = None
        bar = tqdm(range(steps), desc=desc, disable=not progress, leave=False)
        for t in bar:
            batch = next(batches)
            try:
                loss = self.step(batch, masks)
            except FloatingPointError:
                check_finite(batch, getattr(batches, "last_index", t))  # name the batch if it is the cause
                raise
            ema = loss if ema is None else 0.95 * ema + 0.05 * loss
            if (t + 1) % log_every == 0 or t + 1 == steps:
                log.info("%s step %d/%d: aux loss %.6g (running %.6g)", desc, t + 1, steps, loss, ema)
                bar.set_postfix(aux=f"{ema:.4g}")
        return self.history[start:]
