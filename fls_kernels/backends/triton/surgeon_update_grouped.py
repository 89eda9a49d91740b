"""In place for every layer g: W_g ← keep_g ⊙ (W_g − A_g ⊙ (G_R,g (A_g ⊙ Z_g) G_L,g)), Z_g = prune_g ⊙ W_g ⊘
(A_g² ⊙ r_g l_gᵀ) — a whole model's surgeon step in two persistent launches.

The passes are surgeon_update_'s (T_g = (A_g ⊙ Z_g) · G_L,g with A_g ⊙ Z_g built in the prologue, then the
in-place epilogue W_g ← keep_g ⊙ (W_g − A_g ⊙ (G_R,g · T_g))), each run as one persistent launch over every
layer's tiles: program p of P takes tiles p, p + P, … of the layers' tile lists laid end to end (see
kron_qv_grouped). Sizes and addresses come from one int64 [fields, layers] table on the device; the T_g live in
one flat fp32 buffer.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import triton
import triton.language as tl

from fls_kernels.backends.triton._common import (
    gemm_configs,
    grouped_launch,
    layer_ptr,
    layer_shape,
    layer_tile_ends,
    locate_tile,
    on_device,
    prune_gemm_configs,
    tile_coords,
)
from fls_kernels.backends.triton.surgeon_update import _surgeon_update_left_tile, _surgeon_update_right_tile

# Rows of the layer table after m and n (rows 0 and 1): the addresses of each layer's tensors.
_W, _A, _G_R, _G_L, _R, _L, _PRUNE, _KEEP, _T = (tl.constexpr(i) for i in range(2, 11))


# One compiled kernel for every list: the sizes only key the tuning (and LAYERS bounds the table reads).
@triton.autotune(
    configs=gemm_configs(),
    key=["LAYERS", "MAX_M", "MAX_N", "TOTAL", "DTYPE", "PRECISION", "ALIGNED"],
    prune_configs_by={"early_config_prune": prune_gemm_configs},
)
@triton.jit(do_not_specialize=["LAYERS", "MAX_M", "MAX_N", "TOTAL"])
def _surgeon_update_grouped_right_kernel(
    table,
    LAYERS,
    LAYERS_POW2: tl.constexpr,
    MAX_M,
    MAX_N,
    TOTAL,
    DTYPE: tl.constexpr,
    PRECISION: tl.constexpr,
    ALIGNED: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_K: tl.constexpr,
    GROUP_M: tl.constexpr,
):
    """T_g = (A_g ⊙ Z_g) · G_L,g for every layer, persistent over all layers' tiles."""
    ends = layer_tile_ends(table, LAYERS, LAYERS_POW2, BLOCK_M, BLOCK_N)
    for t in range(tl.program_id(0), tl.max(ends, axis=0), tl.num_programs(0)):
        g, local = locate_tile(t, ends)
        m, n = layer_shape(table, g, LAYERS, ALIGNED)
        W = layer_ptr(table, _W, g, LAYERS, DTYPE, ALIGNED)
        A = layer_ptr(table, _A, g, LAYERS, DTYPE, ALIGNED)
        r = layer_ptr(table, _R, g, LAYERS, DTYPE, ALIGNED)
        l = layer_ptr(table, _L, g, LAYERS, DTYPE, ALIGNED)
        prune = layer_ptr(table, _PRUNE, g, LAYERS, tl.uint8, ALIGNED)
        G_L = layer_ptr(table, _G_L, g, LAYERS, DTYPE, ALIGNED)
        T = layer_ptr(table, _T, g, LAYERS, tl.float32, ALIGNED)
        pid_m, pid_n = tile_coords(local, tl.cdiv(m, BLOCK_M), tl.cdiv(n, BLOCK_N), GROUP_M)
        _surgeon_update_right_tile(
            W, A, r, l, prune, G_L, T, m, n, pid_m, pid_n, n, 1, n, 1, 1, 1, n, 1, n, 1, n, 1,
            PRECISION, BLOCK_M, BLOCK_N, BLOCK_K,
        )  # fmt: skip


# Not autotuned: it updates the weights in place, and the autotuner can replay a launch only on tensors it
# can restore — not on layers reached through an address table. It reuses the tile config tuned for the
# first pass, which covers the same [m_g, n_g] outputs.
@triton.jit(do_not_specialize=["LAYERS"])
def _surgeon_update_grouped_left_kernel(
    table,
    LAYERS,
    LAYERS_POW2: tl.constexpr,
    DTYPE: tl.constexpr,
    PRECISION: tl.constexpr,
    ALIGNED: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_K: tl.constexpr,
    GROUP_M: tl.constexpr,
):
    """W_g ← keep_g ⊙ (W_g − A_g ⊙ (G_R,g · T_g)) for every layer, persistent over all layers' tiles."""
    ends = layer_tile_ends(table, LAYERS, LAYERS_POW2, BLOCK_M, BLOCK_N)
    for t in range(tl.program_id(0), tl.max(ends, axis=0), tl.num_programs(0)):
        g, local = locate_tile(t, ends)
        m, n = layer_shape(table, g, LAYERS, ALIGNED)
        G_R = layer_ptr(table, _G_R, g, LAYERS, DTYPE, ALIGNED)
        T = layer_ptr(table, _T, g, LAYERS, tl.float32, ALIGNED)
        W = layer_ptr(table, _W, g, LAYERS, DTYPE, ALIGNED)
        A = layer_ptr(table, _A, g, LAYERS, DTYPE, ALIGNED)
        keep = layer_ptr(table, _KEEP, g, LAYERS, tl.uint8, ALIGNED)
        pid_m, pid_n = tile_coords(local, tl.cdiv(m, BLOCK_M), tl.cdiv(n, BLOCK_N), GROUP_M)
        _surgeon_update_left_tile(
            G_R, T, W, A, keep, m, n, pid_m, pid_n, m, 1, n, 1, n, 1, n, 1, n, 1,
            PRECISION, BLOCK_M, BLOCK_N, BLOCK_K,
        )  # fmt: skip


def surgeon_update_grouped_(
    Ws: Sequence[torch.Tensor],
    As: Sequence[torch.Tensor],
    G_Rs: Sequence[torch.Tensor],
    G_Ls: Sequence[torch.Tensor],
    rs: Sequence[torch.Tensor],
    ls: Sequence[torch.Tensor],
    prunes: Sequence[torch.Tensor],
    keeps: Sequence[torch.Tensor],
    *,
    precision: str = "fp32",
) -> list[torch.Tensor]:
    """In place, for every layer g: Z_g = prune_g ⊙ W_g ⊘ (A_g² ⊙ r_g l_gᵀ);
    W_g ← keep_g ⊙ (W_g − A_g ⊙ (G_R,g (A_g ⊙ Z_g) G_L,g)).

    Args:
        Ws: [m_g, n_g] contiguous weights (fp32, bf16 or fp16), distinct, updated in place.
        As: [m_g, n_g]; G_Rs: [m_g, m_g]; G_Ls: [n_g, n_g]; rs: [m_g]; ls: [n_g] — Ws' dtype.
        prunes, keeps: [m_g, n_g] bool masks (removed now / alive afterwards).
        precision: GEMM operand mode, "fp32" | "tf32" | "bf16" (accumulation is fp32).

    Returns:
        Ws (as a list).
    """
    Ws = list(Ws)
    device, dtype = Ws[0].device, Ws[0].dtype
    shapes = [tuple(W.shape) for W in Ws]
    if all(m * n == 0 for m, n in shapes):
        return Ws
    # Every layer is addressed by its row pitch n: operands are made contiguous (no copy when they are), and
    # masks are read as bytes (a torch.bool is one byte holding 0 or 1).
    As, G_Rs, G_Ls, rs, ls = ([t.contiguous() for t in seq] for seq in (As, G_Rs, G_Ls, rs, ls))
    prunes, keeps = ([t.contiguous().view(torch.uint8) for t in seq] for seq in (prunes, keeps))
    # Table rows after m, n: _W, _A, _G_R, _G_L, _R, _L, _PRUNE, _KEEP, _T (None: the T_g).
    fields = [Ws, As, G_Rs, G_Ls, rs, ls, prunes, keeps, None]
    launch = grouped_launch(shapes, fields, dtype=dtype, precision=precision, device=device)
    with on_device(Ws[0]):
        _surgeon_update_grouped_right_kernel[launch.grid](launch.table, **launch.sizes)
        config = _surgeon_update_grouped_right_kernel.best_config
        _surgeon_update_grouped_left_kernel[launch.grid(config.kwargs)](
            launch.table, **launch.layers, **launch.modes, **config.all_kwargs()
        )
    return Ws
