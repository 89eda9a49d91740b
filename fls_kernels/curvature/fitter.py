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
from torch import Tensor

from fls_kernels import timing
from fls_kernels.curvature.blocks import KronBlock

log = logging.getLogger("fls_kernels.fit")


class AuxFitter:
    """Adam on λ of every block against the auxiliary loss.

    Args:
        blocks: the Q blocks, one per layer.
        fvp: (batch, [v per block]) → [F v per block], the exact Fisher-vector product.
        damping: γ.
        lr: Adam learning rate (1e-3 is the robust default from a data-driven start).
        precondition: apply Q to the residual before backpropagation (a Newton-like step on λ).
        precision: GEMM mode of the Q products.
        generator: RNG of the probes.
        backend: ops backend of the Q products (None: automatic).
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
        self.optimizer = torch.optim.Adam([p for b in blocks for p in b.parameters()], lr=lr)
        #: aux loss 𝒜 of every step taken, in order.
        self.history: list[float] = []

    def step(self, batch: object, masks: list[Tensor] | None = None) -> float:
        """One aux step on ``batch``; ``masks`` ([m, n] bool per block) restrict it to alive weights.

        Returns:
            the sampled aux loss 𝒜 of this step (before the update).

        Raises:
            FloatingPointError: the loss or residual is not finite; λ is left as it was.
        """
        us, vs, grams = [], [], []
        with timing.section("q_products"):
            self._probe(us, vs, grams, masks)
        with timing.section("fvp"), torch.no_grad():
            fvs = self.fvp(batch, [v.detach() for v in vs])
        with timing.section("q_products"):
            return self._update(us, vs, grams, fvs, masks)

    def _probe(self, us: list[Tensor], vs: list[Tensor], grams: list, masks: list[Tensor] | None) -> None:
        """u ∼ 𝒩(0, I) (masked) and v = M ⊙ Q u with its graph to λ, per block."""
        gen = self.generator
        for i, block in enumerate(self.blocks):
            u = torch.randn(block.m, block.n, generator=gen, device=block.A.device, dtype=block.A.dtype)
            if masks is not None:
                u = u * masks[i]
            grams.append(block.grams())
            v = block.qv(u, grams=grams[-1], precision=self.precision, backend=self.backend)
            if masks is not None:
                v = v * masks[i]
            us.append(u)
            vs.append(v)

    def _update(self, us, vs, grams, fvs, masks) -> float:
        """Residuals, optional preconditioning, the surrogate's backward and the Adam step; returns 𝒜."""
        with torch.no_grad():
            residuals, loss = [], 0.0
            for i, (u, v, fv) in enumerate(zip(us, vs, fvs)):
                v = v.detach()
                fgv = fv + self.damping * v
                loss += 0.5 * float((v * fgv).sum()) - float((u * v).sum())
                res = fgv - u
                if masks is not None:
                    res = res * masks[i]
                residuals.append(res)
            norm = math.sqrt(sum(float(v.detach().square().sum()) for v in vs)) * math.sqrt(
                sum(float(u.square().sum()) for u in us)
            )
            if self.precondition:
                residuals = [
                    b.qv(r, grams=(G_R.detach(), G_L.detach()), precision=self.precision, backend=self.backend)
                    for b, r, (G_R, G_L) in zip(self.blocks, residuals, grams)
                ]
                if masks is not None:
                    residuals = [r * m for r, m in zip(residuals, masks)]
        if not math.isfinite(loss) or not all(bool(torch.isfinite(r).all()) for r in residuals):
            raise FloatingPointError(
                f"aux loss diverged at step {len(self.history)} (loss {loss}); lower lr or raise damping"
            )
        scale = 1.0 / norm if norm > 0 else 1.0
        surrogate = sum((r * scale * v).sum() for r, v in zip(residuals, vs))
        self.optimizer.zero_grad(set_to_none=True)
        surrogate.backward()
        self.optimizer.step()
        self.history.append(loss)
        return loss

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
            loss = self.step(next(batches), masks)
            ema = loss if ema is None else 0.95 * ema + 0.05 * loss
            if (t + 1) % log_every == 0 or t + 1 == steps:
                log.info("%s step %d/%d: aux loss %.6g (running %.6g)", desc, t + 1, steps, loss, ema)
                bar.set_postfix(aux=f"{ema:.4g}")
        return self.history[start:]
