"""[A_g ⊙ (G_R,g · (A_g ⊙ V_g) · G_L,g) for every layer g]: the whole list in two persistent launches.

The passes are kron_qv's (T_g = (A_g ⊙ V_g) · G_L,g, then Y_g = A_g ⊙ (G_R,g · T_g)), but each pass is one
persistent launch over every layer's tiles: program p of P takes tiles p, p + P, p + 2P, … of the layers' tile
lists laid end to end (grouped-M order inside a layer), so programs running side by side work on neighbouring
tiles of one layer. A BERT-base step (72 layers of 768 or 3072 rows) then fills the GPU once instead of
launching 144 grids of a few dozen tiles each. Sizes and addresses of every layer come from one int64
[fields, layers] table on the device; a tile finds its layer from prefix sums of the layers' tile counts held
in registers. The per-layer T_g live in one flat fp32 buffer.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import triton
import triton.language as tl

from fls_kernels.backends.alloc import empty
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
from fls_kernels.backends.triton.kron_qv import _kron_qv_left_tile, _kron_qv_right_tile

# Rows of the layer table after m and n (rows 0 and 1): the addresses of each layer's tensors.
_V, _A, _G_R, _G_L, _T, _Y = (tl.constexpr(i) for i in range(2, 8))


# One compiled kernel for every list: the sizes only key the tuning (and LAYERS bounds the table reads).
@triton.autotune(
    configs=gemm_configs(),
    key=["LAYERS", "MAX_M", "MAX_N", "TOTAL", "DTYPE", "PRECISION", "ALIGNED"],
    prune_configs_by={"early_config_prune": prune_gemm_configs},
)
@triton.jit(do_not_specialize=["LAYERS", "MAX_M", "MAX_N", "TOTAL"])
def _kron_qv_grouped_right_kernel(
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
    """T_g = (A_g ⊙ V_g) · G_L,g for every layer, persistent over all layers' tiles."""
    ends = layer_tile_ends(table, LAYERS, LAYERS_POW2, BLOCK_M, BLOCK_N)
    for t in range(tl.program_id(0), tl.max(ends, axis=0), tl.num_programs(0)):
        g, local = locate_tile(t, ends)
        m, n = layer_shape(table, g, LAYERS, ALIGNED)
        V = layer_ptr(table, _V, g, LAYERS, DTYPE, ALIGNED)
        A = layer_ptr(table, _A, g, LAYERS, DTYPE, ALIGNED)
        G_L = layer_ptr(table, _G_L, g, LAYERS, DTYPE, ALIGNED)
        T = layer_ptr(table, _T, g, LAYERS, tl.float32, ALIGNED)
        pid_m, pid_n = tile_coords(local, tl.cdiv(m, BLOCK_M), tl.cdiv(n, BLOCK_N), GROUP_M)
        _kron_qv_right_tile(
            V, A, G_L, T, m, n, pid_m, pid_n, n, 1, n, 1, n, 1, n, 1, PRECISION, BLOCK_M, BLOCK_N, BLOCK_K
        )


# One compiled kernel for every list: the sizes only key the tuning (and LAYERS bounds the table reads).
@triton.autotune(
    configs=gemm_configs(),
    key=["LAYERS", "MAX_M", "MAX_N", "TOTAL", "DTYPE", "PRECISION", "ALIGNED"],
    prune_configs_by={"early_config_prune": prune_gemm_configs},
)
@triton.jit(do_not_specialize=["LAYERS", "MAX_M", "MAX_N", "TOTAL"])
def _kron_qv_grouped_left_kernel(
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
    """Y_g = A_g ⊙ (G_R,g · T_g) for every layer, persistent over all layers' tiles."""
    ends = layer_tile_ends(table, LAYERS, LAYERS_POW2, BLOCK_M, BLOCK_N)
    for t in range(tl.program_id(0), tl.max(ends, axis=0), tl.num_programs(0)):
        g, local = locate_tile(t, ends)
        m, n = layer_shape(table, g, LAYERS, ALIGNED)
        G_R = layer_ptr(table, _G_R, g, LAYERS, DTYPE, ALIGNED)
        T = layer_ptr(table, _T, g, LAYERS, tl.float32, ALIGNED)
        A = layer_ptr(table, _A, g, LAYERS, DTYPE, ALIGNED)
        Y = layer_ptr(table, _Y, g, LAYERS, DTYPE, ALIGNED)
        pid_m, pid_n = tile_coords(local, tl.cdiv(m, BLOCK_M), tl.cdiv(n, BLOCK_N), GROUP_M)
        _kron_qv_left_tile(
            G_R, T, A, Y, m, n, pid_m, pid_n, m, 1, n, 1, n, 1, n, 1, PRECISION, BLOCK_M, BLOCK_N, BLOCK_K
        )


def kron_qv_grouped(
    Vs: Sequence[torch.Tensor],
    As: Sequence[torch.Tensor],
    G_Rs: Sequence[torch.Tensor],
    G_Ls: Sequence[torch.Tensor],
    *,
    precision: str = "fp32",
) -> list[torch.Tensor]:
    """[A_g ⊙ (G_R,g · (A_g ⊙ V_g) · G_L,g) for every layer g].

    Args:
        Vs, As: [m_g, n_g] per layer; G_Rs: [m_g, m_g]; G_Ls: [n_g, n_g] — one dtype (fp32, bf16 or fp16).
        precision: GEMM operand mode, "fp32" | "tf32" | "bf16" (accumulation is fp32).

    Returns:
        one new contiguous [m_g, n_g] tensor per layer.
    """
    device, dtype = Vs[0].device, Vs[0].dtype
    shapes = [tuple(V.shape) for V in Vs]
    Ys = [empty(shape, dtype=dtype, device=device) for shape in shapes]
    if all(m * n == 0 for m, n in shapes):
        return Ys
    # The kernels address every layer by its row pitch n: operands are made contiguous (no copy when they are).
    Vs, As, G_Rs, G_Ls = ([t.contiguous() for t in seq] for seq in (Vs, As, G_Rs, G_Ls))
    # Table rows after m, n: _V, _A, _G_R, _G_L, _T (None: the T_g), _Y.
    launch = grouped_launch(shapes, [Vs, As, G_Rs, G_Ls, None, Ys], dtype=dtype, precision=precision, device=device)
    with on_device(Vs[0]):
        _kron_qv_grouped_right_kernel[launch.grid](launch.table, **launch.sizes)
        _kron_qv_grouped_left_kernel[launch.grid](launch.table, **launch.sizes)
    return Ys
