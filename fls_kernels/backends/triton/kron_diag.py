"""diag(Q) = A² ⊙ (r lᵀ): one read of A (and of r, l per tile), one write, in [BLOCK_M, BLOCK_N] tiles."""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from fls_kernels.backends.alloc import empty
from fls_kernels.backends.triton._common import elementwise_blocks, on_device


@triton.jit
def _kron_diag_kernel(
    A, r, l, D, m, n, s_am, s_an, s_r, s_l, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr
):  # fmt: skip
    """D[tile] = A[tile]² ⊙ r[rows] l[cols]ᵀ; rows on grid axis 0 (no 65 535 limit), columns on axis 1."""
    rm = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    rn = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)
    row_ok, col_ok = rm < m, rn < n
    ok = row_ok[:, None] & col_ok[None, :]
    rm64 = rm.to(tl.int64)
    a = tl.load(A + rm64[:, None] * s_am + rn[None, :] * s_an, mask=ok, other=0.0).to(tl.float32)
    rr = tl.load(r + rm64 * s_r, mask=row_ok, other=0.0).to(tl.float32)
    ll = tl.load(l + rn * s_l, mask=col_ok, other=0.0).to(tl.float32)
    d = a * a * (rr[:, None] * ll[None, :])
    tl.store(D + rm64[:, None] * n + rn[None, :], d.to(D.dtype.element_ty), mask=ok)


def kron_diag(A: torch.Tensor, r: torch.Tensor, l: torch.Tensor) -> torch.Tensor:
    """diag(Q) = A² ⊙ (r lᵀ), laid out like W.

    Args:
        A: [m, n]; r: [m]; l: [n] — one dtype (fp32, bf16 or fp16), any strides.

    Returns:
        [m, n] new contiguous tensor of A's dtype.
    """
    m, n = A.shape
    D = empty((m, n), dtype=A.dtype, device=A.device)
    if m == 0 or n == 0:
        return D
    block_m, block_n = elementwise_blocks(m, n)
    grid = (triton.cdiv(m, block_m), triton.cdiv(n, block_n))
    with on_device(A):
        _kron_diag_kernel[grid](A, r, l, D, m, n, *A.stride(), r.stride(0), l.stride(0), block_m, block_n)
    return D
