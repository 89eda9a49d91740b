"""Q(V) = A ⊙ (G_R · (A ⊙ V) · G_L) as two tiled GEMMs with the A-scaling fused into them.

Pass 1, T = (A ⊙ V) · G_L: the prologue multiplies each [BLOCK_M, BLOCK_K] tile of V by A as it is loaded, so
A ⊙ V is never stored. Pass 2, Y = A ⊙ (G_R · T): the epilogue scales the fp32 accumulator by A before the one
store. T is the only [m, n] temporary (fp32, whatever the GEMM precision).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from fls_kernels.backends.alloc import empty
from fls_kernels.backends.triton._common import (
    gemm_configs,
    left_gram_tile,
    mma,
    on_device,
    prune_gemm_configs,
    tile_coords,
)


@triton.jit
def _kron_qv_right_tile(
    V,
    A,
    G_L,
    T,
    m,
    n,
    pid_m,
    pid_n,
    s_vm,
    s_vn,
    s_am,
    s_an,
    s_gk,
    s_gn,
    s_tm,
    s_tn,
    PRECISION: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_K: tl.constexpr,
):
    """T[tile] = Σ_k (A ⊙ V)[rows, k] · G_L[k, cols], the product A ⊙ V formed in registers per K step."""
    rm = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    rn = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    rk = tl.arange(0, BLOCK_K)
    row_ok, col_ok = rm < m, rn < n
    rm64 = rm.to(tl.int64)
    v_ptrs = V + rm64[:, None] * s_vm + rk[None, :] * s_vn
    a_ptrs = A + rm64[:, None] * s_am + rk[None, :] * s_an
    g_ptrs = G_L + rk.to(tl.int64)[:, None] * s_gk + rn[None, :] * s_gn
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for k0 in range(0, n, BLOCK_K):
        k_ok = (k0 + rk) < n
        lhs_ok = row_ok[:, None] & k_ok[None, :]
        v = tl.load(v_ptrs, mask=lhs_ok, other=0.0).to(tl.float32)
        a = tl.load(a_ptrs, mask=lhs_ok, other=0.0).to(tl.float32)
        g = tl.load(g_ptrs, mask=k_ok[:, None] & col_ok[None, :], other=0.0).to(tl.float32)
        acc = mma(a * v, g, acc, PRECISION)
        v_ptrs += BLOCK_K * s_vn
        a_ptrs += BLOCK_K * s_an
        g_ptrs += BLOCK_K * s_gk
    tl.store(T + rm64[:, None] * s_tm + rn[None, :] * s_tn, acc, mask=row_ok[:, None] & col_ok[None, :])


@triton.jit
def _kron_qv_left_tile(
    G_R,
    T,
    A,
    Y,
    m,
    n,
    pid_m,
    pid_n,
    s_gm,
    s_gk,
    s_tm,
    s_tn,
    s_am,
    s_an,
    s_ym,
    s_yn,
    PRECISION: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_K: tl.constexpr,
):
    """Y[tile] = A[tile] ⊙ (G_R · T)[tile], the A-scaling applied to the accumulator before the store."""
    rm = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    rn = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    row_ok, col_ok = rm < m, rn < n
    acc = left_gram_tile(
        G_R, T, m, rm, rn, row_ok, col_ok, s_gm, s_gk, s_tm, s_tn, PRECISION, BLOCK_M, BLOCK_N, BLOCK_K
    )
    rm64 = rm.to(tl.int64)
    ok = row_ok[:, None] & col_ok[None, :]
    a = tl.load(A + rm64[:, None] * s_am + rn[None, :] * s_an, mask=ok, other=0.0).to(tl.float32)
    y = a * acc
    tl.store(Y + rm64[:, None] * s_ym + rn[None, :] * s_yn, y.to(Y.dtype.element_ty), mask=ok)


@triton.autotune(
    configs=gemm_configs(),
    key=["M", "N", "K", "PRECISION"],
    prune_configs_by={"early_config_prune": prune_gemm_configs},
)
@triton.jit
def _kron_qv_right_kernel(
    V,
    A,
    G_L,
    T,
    M,
    N,
    K,
    s_vm,
    s_vn,
    s_am,
    s_an,
    s_gk,
    s_gn,
    PRECISION: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_K: tl.constexpr,
    GROUP_M: tl.constexpr,
):
    """T = (A ⊙ V) · G_L, one [BLOCK_M, BLOCK_N] tile of T per program (K = N)."""
    pid_m, pid_n = tile_coords(tl.program_id(0), tl.cdiv(M, BLOCK_M), tl.cdiv(N, BLOCK_N), GROUP_M)
    _kron_qv_right_tile(
        V, A, G_L, T, M, N, pid_m, pid_n, s_vm, s_vn, s_am, s_an, s_gk, s_gn, N, 1, PRECISION, BLOCK_M, BLOCK_N, BLOCK_K
    )


@triton.autotune(
    configs=gemm_configs(),
    key=["M", "N", "K", "PRECISION"],
    prune_configs_by={"early_config_prune": prune_gemm_configs},
)
@triton.jit
def _kron_qv_left_kernel(
    G_R,
    T,
    A,
    Y,
    M,
    N,
    K,
    s_gm,
    s_gk,
    s_am,
    s_an,
    PRECISION: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_K: tl.constexpr,
    GROUP_M: tl.constexpr,
):
    """Y = A ⊙ (G_R · T), one [BLOCK_M, BLOCK_N] tile of Y (contiguous) per program (K = M)."""
    pid_m, pid_n = tile_coords(tl.program_id(0), tl.cdiv(M, BLOCK_M), tl.cdiv(N, BLOCK_N), GROUP_M)
    _kron_qv_left_tile(
        G_R, T, A, Y, M, N, pid_m, pid_n, s_gm, s_gk, N, 1, s_am, s_an, N, 1, PRECISION, BLOCK_M, BLOCK_N, BLOCK_K
    )


def kron_qv(
    V: torch.Tensor, A: torch.Tensor, G_R: torch.Tensor, G_L: torch.Tensor, *, precision: str = "fp32"
) -> torch.Tensor:
    """Q(V) = A ⊙ (G_R · (A ⊙ V) · G_L).

    Args:
        V: [m, n]; A: [m, n]; G_R: [m, m]; G_L: [n, n] — one dtype (fp32, bf16 or fp16), any strides.
        precision: GEMM operand mode, "fp32" | "tf32" | "bf16" (accumulation is fp32).

    Returns:
        [m, n] new contiguous tensor of V's dtype.
    """
    m, n = V.shape
    Y = empty((m, n), dtype=V.dtype, device=V.device)
    if m == 0 or n == 0:
        return Y
    T = empty((m, n), dtype=torch.float32, device=V.device)

    def grid(meta):
        return (triton.cdiv(m, meta["BLOCK_M"]) * triton.cdiv(n, meta["BLOCK_N"]),)

    with on_device(V):
        _kron_qv_right_kernel[grid](V, A, G_L, T, m, n, n, *V.stride(), *A.stride(), *G_L.stride(), PRECISION=precision)
        _kron_qv_left_kernel[grid](G_R, T, A, Y, m, n, m, *G_R.stride(), *A.stride(), PRECISION=precision)
    return Y
