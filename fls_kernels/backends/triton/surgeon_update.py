"""In place: Z = prune ⊙ W ⊘ (A² ⊙ r lᵀ);  W ← keep ⊙ (W − A ⊙ (G_R (A ⊙ Z) G_L)), fused into two GEMM passes.

Pass 1, T = (A ⊙ Z) · G_L: the prologue builds each [BLOCK_M, BLOCK_K] tile of A ⊙ Z = prune ⊙ W ⊘ (A ⊙ r lᵀ)
from W, A, r, l and the prune mask as they are loaded (Z and diag Q are never stored). Pass 2, per tile of W:
U = G_R · T accumulated in fp32, then the epilogue reads W, A and keep once and writes W ← keep ⊙ (W − A ⊙ U)
in place — each program reads and writes only its own tile, so no other program sees a half-updated W.
T is the only [m, n] temporary (fp32). Removed entries are written as +0.0 by a select, never by arithmetic.
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
def _surgeon_update_right_tile(
    W,
    A,
    r,
    l,
    prune,
    G_L,
    T,
    m,
    n,
    pid_m,
    pid_n,
    s_wm,
    s_wn,
    s_am,
    s_an,
    s_r,
    s_l,
    s_pm,
    s_pn,
    s_gk,
    s_gn,
    s_tm,
    s_tn,
    PRECISION: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_K: tl.constexpr,
):
    """T[tile] = Σ_k X[rows, k] · G_L[k, cols] with X = prune ⊙ W ⊘ (A ⊙ r lᵀ) formed in registers."""
    rm = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    rn = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    rk = tl.arange(0, BLOCK_K)
    row_ok, col_ok = rm < m, rn < n
    rm64 = rm.to(tl.int64)
    rr = tl.load(r + rm64 * s_r, mask=row_ok, other=1.0).to(tl.float32)
    w_ptrs = W + rm64[:, None] * s_wm + rk[None, :] * s_wn
    a_ptrs = A + rm64[:, None] * s_am + rk[None, :] * s_an
    p_ptrs = prune + rm64[:, None] * s_pm + rk[None, :] * s_pn
    l_ptrs = l + rk * s_l
    g_ptrs = G_L + rk.to(tl.int64)[:, None] * s_gk + rn[None, :] * s_gn
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for k0 in range(0, n, BLOCK_K):
        k_ok = (k0 + rk) < n
        lhs_ok = row_ok[:, None] & k_ok[None, :]
        w = tl.load(w_ptrs, mask=lhs_ok, other=0.0).to(tl.float32)
        a = tl.load(a_ptrs, mask=lhs_ok, other=1.0).to(tl.float32)
        p = tl.load(p_ptrs, mask=lhs_ok, other=0)
        ll = tl.load(l_ptrs, mask=k_ok, other=1.0).to(tl.float32)
        # A ⊙ Z = W / (A r l) where pruned; a select (not a product with the mask) keeps inf/NaN of unpruned
        # entries with a zero diagonal out of the sum.
        x = tl.where(p != 0, w / (a * rr[:, None] * ll[None, :]), 0.0)
        g = tl.load(g_ptrs, mask=k_ok[:, None] & col_ok[None, :], other=0.0).to(tl.float32)
        acc = mma(x, g, acc, PRECISION)
        w_ptrs += BLOCK_K * s_wn
        a_ptrs += BLOCK_K * s_an
        p_ptrs += BLOCK_K * s_pn
        l_ptrs += BLOCK_K * s_l
        g_ptrs += BLOCK_K * s_gk
    tl.store(T + rm64[:, None] * s_tm + rn[None, :] * s_tn, acc, mask=row_ok[:, None] & col_ok[None, :])


@triton.jit
def _surgeon_update_left_tile(
    G_R,
    T,
    W,
    A,
    keep,
    m,
    n,
    pid_m,
    pid_n,
    s_gm,
    s_gk,
    s_tm,
    s_tn,
    s_wm,
    s_wn,
    s_am,
    s_an,
    s_km,
    s_kn,
    PRECISION: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_K: tl.constexpr,
):
    """W[tile] ← keep ⊙ (W − A ⊙ (G_R · T))[tile], read and written once by this program."""
    rm = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    rn = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    row_ok, col_ok = rm < m, rn < n
    acc = left_gram_tile(
        G_R, T, m, rm, rn, row_ok, col_ok, s_gm, s_gk, s_tm, s_tn, PRECISION, BLOCK_M, BLOCK_N, BLOCK_K
    )
    rm64 = rm.to(tl.int64)
    ok = row_ok[:, None] & col_ok[None, :]
    w_ptrs = W + rm64[:, None] * s_wm + rn[None, :] * s_wn
    w = tl.load(w_ptrs, mask=ok, other=0.0).to(tl.float32)
    a = tl.load(A + rm64[:, None] * s_am + rn[None, :] * s_an, mask=ok, other=0.0).to(tl.float32)
    kept = tl.load(keep + rm64[:, None] * s_km + rn[None, :] * s_kn, mask=ok, other=0) != 0
    w = tl.where(kept, w - a * acc, 0.0)
    tl.store(w_ptrs, w.to(W.dtype.element_ty), mask=ok)


@triton.autotune(
    configs=gemm_configs(),
    key=["M", "N", "K", "PRECISION"],
    prune_configs_by={"early_config_prune": prune_gemm_configs},
)
@triton.jit
def _surgeon_update_right_kernel(
    W,
    A,
    r,
    l,
    prune,
    G_L,
    T,
    M,
    N,
    K,
    s_wm,
    s_wn,
    s_am,
    s_an,
    s_r,
    s_l,
    s_pm,
    s_pn,
    s_gk,
    s_gn,
    PRECISION: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_K: tl.constexpr,
    GROUP_M: tl.constexpr,
):
    """T = (A ⊙ Z) · G_L, one [BLOCK_M, BLOCK_N] tile of T per program (K = N)."""
    pid_m, pid_n = tile_coords(tl.program_id(0), tl.cdiv(M, BLOCK_M), tl.cdiv(N, BLOCK_N), GROUP_M)
    _surgeon_update_right_tile(
        W, A, r, l, prune, G_L, T, M, N, pid_m, pid_n, s_wm, s_wn, s_am, s_an, s_r, s_l, s_pm, s_pn, s_gk, s_gn,
        N, 1, PRECISION, BLOCK_M, BLOCK_N, BLOCK_K,
    )  # fmt: skip


# The autotuner replays this pass once per candidate config; restoring W keeps the update applied once.
@triton.autotune(
    configs=gemm_configs(),
    key=["M", "N", "K", "PRECISION"],
    prune_configs_by={"early_config_prune": prune_gemm_configs},
    restore_value=["W"],
)
@triton.jit
def _surgeon_update_left_kernel(
    G_R,
    T,
    W,
    A,
    keep,
    M,
    N,
    K,
    s_gm,
    s_gk,
    s_wm,
    s_wn,
    s_am,
    s_an,
    s_km,
    s_kn,
    PRECISION: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_K: tl.constexpr,
    GROUP_M: tl.constexpr,
):
    """W ← keep ⊙ (W − A ⊙ (G_R · T)), one [BLOCK_M, BLOCK_N] tile of W per program (K = M)."""
    pid_m, pid_n = tile_coords(tl.program_id(0), tl.cdiv(M, BLOCK_M), tl.cdiv(N, BLOCK_N), GROUP_M)
    _surgeon_update_left_tile(
        G_R, T, W, A, keep, M, N, pid_m, pid_n, s_gm, s_gk, N, 1, s_wm, s_wn, s_am, s_an, s_km, s_kn,
        PRECISION, BLOCK_M, BLOCK_N, BLOCK_K,
    )  # fmt: skip


def surgeon_update_(
    W: torch.Tensor,
    A: torch.Tensor,
    G_R: torch.Tensor,
    G_L: torch.Tensor,
    r: torch.Tensor,
    l: torch.Tensor,
    prune: torch.Tensor,
    keep: torch.Tensor,
    *,
    precision: str = "fp32",
) -> torch.Tensor:
    """In place: Z = prune ⊙ W ⊘ (A² ⊙ r lᵀ);  W ← keep ⊙ (W − A ⊙ (G_R (A ⊙ Z) G_L)).

    Args:
        W: [m, n] weights (fp32, bf16 or fp16), updated in place; A: [m, n]; G_R: [m, m]; G_L: [n, n];
            r: [m]; l: [n] — W's dtype, any strides.
        prune: [m, n] bool, removed now; keep: [m, n] bool, alive afterwards (the rest become +0).
        precision: GEMM operand mode, "fp32" | "tf32" | "bf16" (accumulation is fp32).

    Returns:
        W.
    """
    m, n = W.shape
    if m == 0 or n == 0:
        return W
    T = empty((m, n), dtype=torch.float32, device=W.device)
    # Masks are read as bytes (a torch.bool is one byte holding 0 or 1).
    prune_u8, keep_u8 = prune.view(torch.uint8), keep.view(torch.uint8)

    def grid(meta):
        return (triton.cdiv(m, meta["BLOCK_M"]) * triton.cdiv(n, meta["BLOCK_N"]),)

    with on_device(W):
        _surgeon_update_right_kernel[grid](
            W, A, r, l, prune_u8, G_L, T, m, n, n, *W.stride(), *A.stride(), r.stride(0), l.stride(0),
            *prune_u8.stride(), *G_L.stride(), PRECISION=precision,
        )  # fmt: skip
        _surgeon_update_left_kernel[grid](
            G_R, T, W, A, keep_u8, m, n, m, *G_R.stride(), *W.stride(), *A.stride(), *keep_u8.stride(),
            PRECISION=precision,
        )  # fmt: skip
    return W
