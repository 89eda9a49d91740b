"""KronBlock: the learned inverse-Fisher block Q(λ) of one layer, λ = (R, L, A).

    Q(V) = A ⊙ (RᵀR · (A ⊙ V) · LLᵀ),   diag(Q) = A² ⊙ (‖R[:, i]‖² ‖L[j, :]‖²)

PSD by construction. Initialisations: identity (Q₀ = s·I), diagonal (Q₀ = diag(F̂ + γ)⁻¹) and K-FAC
(G_R = (G + γ^½/π I)⁻¹, G_L = (Ā + π γ^½ I)⁻¹ with π² = (tr Ā / n)/(tr G / m)).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import TypeVar

import torch
from torch import Tensor, nn

from fls_kernels import ops

T = TypeVar("T")


class KronBlock(nn.Module):
    """Parameters λ of one layer's Q block, with cached Gram factors.

    Args:
        m, n: the layer matrix shape (bias column included in n).
        dtype, device: of λ.

    Example:
        >>> block = KronBlock(64, 145)
        >>> QV = block.qv(torch.randn(64, 145))
    """

    def __init__(self, m: int, n: int, *, dtype: torch.dtype = torch.float32, device=None) -> None:
        super().__init__()
        self.m, self.n = m, n
        self.R = nn.Parameter(torch.eye(m, dtype=dtype, device=device))
        self.L = nn.Parameter(torch.eye(n, dtype=dtype, device=device))
        self.A = nn.Parameter(torch.ones(m, n, dtype=dtype, device=device))
        self._memo: dict[str, tuple[tuple, object]] = {}

    @property
    def device(self) -> torch.device:
        return self.A.device

    @property
    def dtype(self) -> torch.dtype:
        return self.A.dtype

    # ------------------------------------------------------------------------------------------ products
    def grams(self) -> tuple[Tensor, Tensor]:
        """(G_R, G_L) = (RᵀR, LLᵀ). Cached while λ is unchanged and no gradient is being recorded."""
        tracking = torch.is_grad_enabled() and (self.R.requires_grad or self.L.requires_grad)
        if tracking:
            return self.R.mT @ self.R, self.L @ self.L.mT
        return self.memo("grams", lambda: (self.R.mT @ self.R, self.L @ self.L.mT))

    def memo(self, name: str, compute: Callable[[], T]) -> T:
        """``compute()`` (without gradients), cached under ``name`` while λ = (R, L, A) is unchanged: for derived
        factors a solver reads at every sub-step."""
        key = tuple((p._version, p.data_ptr()) for p in (self.R, self.L, self.A))
        hit = self._memo.get(name)
        if hit is None or hit[0] != key:
            with torch.no_grad():
                hit = self._memo[name] = (key, compute())
        return hit[1]  # type: ignore[return-value]

    def factor_diags(self) -> tuple[Tensor, Tensor]:
        """(r, l) = (diag G_R, diag G_L) = (‖R[:, i]‖², ‖L[j, :]‖²)."""
        G_R, G_L = self.grams()
        return G_R.diagonal().contiguous(), G_L.diagonal().contiguous()

    def qv(
        self,
        V: Tensor,
        *,
        grams: tuple[Tensor, Tensor] | None = None,
        precision: str = "fp32",
        backend: str | None = None,
    ) -> Tensor:
        """Q(V) = A ⊙ (G_R (A ⊙ V) G_L); differentiable in λ when grad mode is on. V: [m, n].

        ``grams`` reuses (G_R, G_L) computed by :meth:`grams` for several products of one λ.
        """
        G_R, G_L = grams if grams is not None else self.grams()
        A = self.A if torch.is_grad_enabled() else self.A.detach()
        return ops.kron_qv(V, A, G_R, G_L, precision=precision, backend=backend)

    def diag(self, *, backend: str | None = None) -> Tensor:
        """diag(Q) as an [m, n] matrix."""
        r, l = self.factor_diags()
        return ops.kron_diag(self.A, r, l, backend=backend)

    # ------------------------------------------------------------------------------------------ initialisation
    @torch.no_grad()
    def init_identity(self, scale: float) -> None:
        """Q₀ = scale · I."""
        if not (math.isfinite(scale) and scale > 0):
            raise ValueError(f"scale: expected a positive finite number, got {scale}")
        self.R.copy_(torch.eye(self.m))
        self.L.copy_(torch.eye(self.n))
        self.A.fill_(math.sqrt(scale))

    @torch.no_grad()
    def init_diagonal(self, fisher_diag: Tensor, damping: float) -> None:
        """Q₀ = diag(F̂ + γ)⁻¹: R = I, L = I, A = (F̂ + γ)^{-1/2}. fisher_diag: [m, n]."""
        self.R.copy_(torch.eye(self.m))
        self.L.copy_(torch.eye(self.n))
        self.A.copy_((fisher_diag.to(self.A) + damping).rsqrt())

    @torch.no_grad()
    def init_kfac(self, act_cov: Tensor, grad_cov: Tensor, damping: float) -> None:
        """Q₀ = (G + γ^½/π I)⁻¹ ⊗ (Ā + π γ^½ I)⁻¹ with A = 1. act_cov Ā: [n, n]; grad_cov G: [m, m]."""
        act = act_cov.to(torch.float64)
        grad = grad_cov.to(torch.float64)
        ta, tg = act.trace().item() / self.n, grad.trace().item() / self.m
        pi = math.sqrt(ta / tg) if ta > 0 and tg > 0 else 1.0
        root = math.sqrt(damping)
        G_L = torch.linalg.inv(act + pi * root * torch.eye(self.n, dtype=act.dtype, device=act.device))
        G_R = torch.linalg.inv(grad + root / pi * torch.eye(self.m, dtype=grad.dtype, device=grad.device))
        self.L.copy_(torch.linalg.cholesky(_sym(G_L)))  # L Lᵀ = G_L
        self.R.copy_(torch.linalg.cholesky(_sym(G_R)).mT)  # Rᵀ R = G_R
        self.A.fill_(1.0)

    @torch.no_grad()
    def balance_(self) -> None:
        """R ← c R, L ← L / c with c² = rms(L) / rms(R): the same Q (G_R c² ⊗ G_L / c²), with R and L at one scale,
        so that an optimizer stepping every entry by about its learning rate (Adam) moves both factors alike."""
        r, l = self.R.square().mean().sqrt(), self.L.square().mean().sqrt()
        if not (bool(torch.isfinite(r * l)) and float(r) > 0 and float(l) > 0):
            return
        c = (l / r).sqrt()
        self.R.mul_(c)
        self.L.div_(c)

    def extra_repr(self) -> str:
        return f"m={self.m}, n={self.n}"


class RemoteBlock(nn.Module):
    """Stand-in for a layer's Q block that another rank owns (sharded pruning): its shape, no λ."""

    def __init__(self, m: int, n: int, owner: int, *, dtype: torch.dtype, device=None) -> None:
        super().__init__()
        self.m, self.n, self.owner = m, n, owner
        self.dtype, self.device = dtype, torch.device(device or "cpu")

    def extra_repr(self) -> str:
        return f"m={self.m}, n={self.n}, owner={self.owner}"


def _sym(M: Tensor) -> Tensor:
    return (M + M.mT) / 2
