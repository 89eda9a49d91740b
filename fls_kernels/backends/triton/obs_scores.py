"""ρ = W² / (2 · A² ⊙ r lᵀ), +inf where the mask is False: one pass over W, A and the mask, diag Q never stored."""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from fls_kernels.backends.alloc import empty
from fls_kernels.backends.triton._common import elementwise_blocks, on_device


@triton.jit
def _obs_scores_kernel(
    W, A, r, l, alive, S, m, n, s_wm, s_wn, s_am, s_an, s_r, s_l, s_km, s_kn,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
):  # fmt: skip
    """S[tile] = W² / (2 A² r lᵀ) where alive, else +inf; rows on grid axis 0, columns on axis 1."""
    rm = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    rn = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)
    row_ok, col_ok = rm < m, rn < n
    ok = row_ok[:, None] & col_ok[None, :]
    rm64 = rm.to(tl.int64)
    w = tl.load(W + rm64[:, None] * s_wm + rn[None, :] * s_wn, mask=ok, other=0.0).to(tl.float32)
    a = tl.load(A + rm64[:, None] * s_am + rn[None, :] * s_an, mask=ok, other=1.0).to(tl.float32)
    keep = tl.load(alive + rm64[:, None] * s_km + rn[None, :] * s_kn, mask=ok, other=0) != 0
    rr = tl.load(r + rm64 * s_r, mask=row_ok, other=1.0).to(tl.float32)
    ll = tl.load(l + rn * s_l, mask=col_ok, other=1.0).to(tl.float32)
    rho = (w * w) / (2.0 * (a * a * (rr[:, None] * ll[None, :])))
    rho = tl.where(keep, rho, float("inf"))
    tl.store(S + rm64[:, None] * n + rn[None, :], rho.to(S.dtype.element_ty), mask=ok)


def obs_scores(W: torch.Tensor, A: torch.Tensor, r: torch.Tensor, l: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """ρ = W² / (2 · A² ⊙ (r lᵀ)), +inf where ``mask`` is False.

    Args:
        W: [m, n]; A: [m, n]; r: [m]; l: [n] — one dtype (fp32, bf16 or fp16), any strides.
        mask: [m, n] bool, True where the weight is alive.

    Returns:
        [m, n] new contiguous tensor of W's dtype.
    """
    m, n = W.shape
    S = empty((m, n), dtype=W.dtype, device=W.device)
    if m == 0 or n == 0:
        return S
    alive = mask.view(torch.uint8)  # a torch.bool is one byte holding 0 or 1
    block_m, block_n = elementwise_blocks(m, n)
    grid = (triton.cdiv(m, block_m), triton.cdiv(n, block_n))
    with on_device(W):
        _obs_scores_kernel[grid](
            W, A, r, l, alive, S, m, n, *W.stride(), *A.stride(), r.stride(0), l.stride(0), *alive.stride(),
            block_m, block_n,
        )  # fmt: skip
    return S
