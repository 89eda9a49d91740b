"""Pieces shared by the Triton kernels: the GEMM step in each precision mode, tile ordering, autotuning configs.

``precision`` selects how a GEMM multiplies its operands, never how it accumulates (always fp32):

    "fp32" → tl.dot(..., input_precision="ieee")     fp32 FMA on the CUDA cores
    "tf32" → tl.dot(..., input_precision="tf32")     tensor cores on the fp32 bits; they read a 10-bit mantissa
                                                     (Hopper's wgmma truncates: no rounding instruction is issued)
    "bf16" → tl.dot(a.to(bf16), b.to(bf16))          tensor cores, operands rounded to nearest (7-bit mantissa)

Under ``TRITON_INTERPRET=1`` the interpreter multiplies fp32 whatever mode is asked (and bf16 operands as raw
integers), so there the operands are cut to the mode's mantissa the way the GPU does first: CPU tests then see
the error the tensor cores would make.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import triton
import triton.language as tl

from fls_kernels.backends.alloc import empty

#: True when kernels run through Triton's CPU interpreter (read once, as ``triton.jit`` itself does).
INTERPRET = tl.constexpr(os.environ.get("TRITON_INTERPRET", "0") == "1")

#: torch dtype → Triton element type, for pointers rebuilt from addresses in the grouped kernels.
TL_DTYPES = {torch.float32: tl.float32, torch.bfloat16: tl.bfloat16, torch.float16: tl.float16}


@triton.jit
def _cut_mantissa(x, DROP: tl.constexpr, NEAREST: tl.constexpr):
    """fp32 ``x`` with its lowest DROP mantissa bits cleared (13: tf32, 16: bf16), rounded to nearest even
    when NEAREST, else truncated."""
    bits = x.to(tl.uint32, bitcast=True)
    if NEAREST:
        bits = bits + ((1 << (DROP - 1)) - 1) + ((bits >> DROP) & 1)
    bits = bits & (0xFFFFFFFF ^ ((1 << DROP) - 1))
    return bits.to(tl.float32, bitcast=True)


@triton.jit
def mma(a, b, acc, PRECISION: tl.constexpr):
    """acc + a @ b with fp32 operands ``a`` [BM, BK], ``b`` [BK, BN] multiplied in mode ``PRECISION``."""
    if INTERPRET:
        if PRECISION == "tf32":
            a = _cut_mantissa(a, 13, False)
            b = _cut_mantissa(b, 13, False)
        elif PRECISION == "bf16":
            a = _cut_mantissa(a, 16, True)
            b = _cut_mantissa(b, 16, True)
        return tl.dot(a, b, acc, input_precision="ieee")
    else:
        if PRECISION == "bf16":
            return tl.dot(a.to(tl.bfloat16), b.to(tl.bfloat16), acc)
        elif PRECISION == "tf32":
            return tl.dot(a, b, acc, input_precision="tf32")
        else:
            return tl.dot(a, b, acc, input_precision="ieee")


@triton.jit
def tile_coords(tile, tiles_m, tiles_n, GROUP_M: tl.constexpr):
    """(row block, column block) of linear ``tile`` in grouped-M order.

    Consecutive tiles walk down a band of ``GROUP_M`` row blocks before moving right, so programs that run
    together share the same column panel of the right operand (and the same few row panels of the left) in L2.
    """
    per_band = GROUP_M * tiles_n
    band = tile // per_band
    first_m = band * GROUP_M
    band_m = tl.minimum(tiles_m - first_m, GROUP_M)
    within = tile % per_band
    return first_m + within % band_m, within // band_m


@triton.jit
def left_gram_tile(
    G,
    X,
    k_total,
    rm,
    rn,
    row_ok,
    col_ok,
    s_gm,
    s_gk,
    s_xk,
    s_xn,
    PRECISION: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_K: tl.constexpr,
):
    """(G · X)[rm, rn] in fp32: the G_R product of Q = D_A (G_R ⊗ G_L) D_A, shared by every second pass.

    G: [·, k_total] and X: [k_total, ·] by strides; ``row_ok``/``col_ok`` mask rows of G and columns of X.
    The K loop advances both tile pointers by BLOCK_K; tails are zero-filled so they add nothing.
    """
    rk = tl.arange(0, BLOCK_K)
    g_ptrs = G + rm.to(tl.int64)[:, None] * s_gm + rk[None, :] * s_gk
    x_ptrs = X + rk.to(tl.int64)[:, None] * s_xk + rn[None, :] * s_xn
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for k0 in range(0, k_total, BLOCK_K):
        k_ok = (k0 + rk) < k_total
        g = tl.load(g_ptrs, mask=row_ok[:, None] & k_ok[None, :], other=0.0).to(tl.float32)
        x = tl.load(x_ptrs, mask=k_ok[:, None] & col_ok[None, :], other=0.0).to(tl.float32)
        acc = mma(g, x, acc, PRECISION)
        g_ptrs += BLOCK_K * s_gk
        x_ptrs += BLOCK_K * s_xk
    return acc


@triton.jit
def layer_shape(table, g, LAYERS, ALIGNED: tl.constexpr):
    """(m, n) of layer ``g`` from rows 0 and 1 of a grouped launch's int64 [fields, LAYERS] table. With ALIGNED
    both are promised to be multiples of 16, so rows of contiguous fp32 operands start 64-byte aligned."""
    m = tl.load(table + g).to(tl.int32)
    n = tl.load(table + LAYERS + g).to(tl.int32)
    if ALIGNED:
        m = tl.multiple_of(m, 16)
        n = tl.multiple_of(n, 16)
    return m, n


@triton.jit
def layer_ptr(table, field, g, LAYERS, DTYPE: tl.constexpr, ALIGNED: tl.constexpr):
    """Pointer to elements of type DTYPE rebuilt from the address in row ``field`` of the table for layer ``g``."""
    p = tl.load(table + field * LAYERS + g).to(tl.pointer_type(DTYPE))
    if ALIGNED:
        p = tl.multiple_of(p, 16)
    return p


@triton.jit
def layer_tile_ends(table, LAYERS, LAYERS_POW2: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
    """Inclusive prefix sums of the layers' tile counts, [LAYERS_POW2] in registers (padding adds no tiles).

    Loaded once per program from the table's m and n rows, so finding a tile's layer later costs register
    compares and a block reduction, not a walk over the table in memory.
    """
    g = tl.arange(0, LAYERS_POW2)
    ms = tl.load(table + g, mask=g < LAYERS, other=0).to(tl.int32)
    ns = tl.load(table + LAYERS + g, mask=g < LAYERS, other=0).to(tl.int32)
    return tl.cumsum(tl.cdiv(ms, BLOCK_M) * tl.cdiv(ns, BLOCK_N), axis=0)


@triton.jit
def locate_tile(t, ends):
    """(layer, tile index inside the layer) of tile ``t`` of the whole launch, from ``layer_tile_ends``."""
    before = ends <= t
    return tl.sum(before.to(tl.int32), axis=0), t - tl.max(tl.where(before, ends, 0), axis=0)


# ----------------------------------------------------------------------------------------------- launch helpers
def on_device(t: torch.Tensor) -> contextlib.AbstractContextManager:
    """Make ``t``'s GPU the current one for a launch (a no-op on the CPU)."""
    return torch.cuda.device(t.device) if t.is_cuda else contextlib.nullcontext()


def address_table(rows: list[list[int]], device: torch.device) -> torch.Tensor:
    """The int64 [fields, layers] table of a grouped launch (rows 0, 1: m, n; then addresses), in one transfer."""
    table = torch.tensor(rows, dtype=torch.int64, pin_memory=device.type == "cuda")
    return table.to(device, non_blocking=True)


def all_aligned(sizes: list[int], tensors: list[torch.Tensor]) -> bool:
    """True when every size is a multiple of 16 and every tensor starts on a 16-byte boundary, so the grouped
    kernels may promise the compiler 16-element row pitches and aligned bases (vectorised 16-byte accesses)."""
    return all(s % 16 == 0 for s in sizes) and all(t.data_ptr() % 16 == 0 for t in tensors)


@dataclass
class GroupedLaunch:
    """The host side of a grouped op's two persistent passes, shared by both.

    Attributes:
        table: the int64 [fields, layers] table on the device (rows 0, 1: m, n; then one row of addresses per
            field, in the order given to :func:`grouped_launch`).
        scratch: one flat fp32 buffer holding every layer's [m_g, n_g] temporary T_g (kept alive by the launch).
        layers: ``LAYERS`` (the table's width) and ``LAYERS_POW2`` (its padding for register prefix sums, ≥ 16).
        extent: ``MAX_M``, ``MAX_N`` and ``TOTAL`` (elements of ``scratch``), the sizes the first pass is tuned on.
        modes: ``DTYPE``, ``PRECISION`` and ``ALIGNED`` (see :func:`all_aligned`; the T_g included).
        shapes: (m_g, n_g) per layer.
    """

    table: torch.Tensor
    scratch: torch.Tensor
    layers: dict
    extent: dict
    modes: dict
    shapes: Sequence[tuple[int, int]]

    @property
    def sizes(self) -> dict:
        """Every size and mode argument of a pass: ``layers``, ``extent`` and ``modes`` together."""
        return {**self.layers, **self.extent, **self.modes}

    def grid(self, meta: dict) -> tuple[int]:
        """(programs,) of a persistent pass over every layer's tiles with tile config ``meta``."""
        tiles = sum(triton.cdiv(m, meta["BLOCK_M"]) * triton.cdiv(n, meta["BLOCK_N"]) for m, n in self.shapes)
        return (persistent_programs(self.table.device, meta, tiles),)


def grouped_launch(
    shapes: Sequence[tuple[int, int]],
    fields: Sequence[Sequence[torch.Tensor] | None],
    *,
    dtype: torch.dtype,
    precision: str,
    device: torch.device,
) -> GroupedLaunch:
    """Allocate the T_g of every layer in one flat fp32 buffer and build the address table of a grouped launch.

    Args:
        shapes: (m_g, n_g) per layer, not all empty.
        fields: the table's rows after m and n, in order: one contiguous tensor per layer (addressed by its row
            pitch n_g), or None for the row of the T_g (layer g's slice of the buffer starts at Σ_{h<g} m_h n_h).
        dtype: the layers' element type; precision: the GEMM mode; device: where the layers live.
    """
    starts = [0]
    for m, n in shapes:
        starts.append(starts[-1] + m * n)
    T = empty((starts[-1],), dtype=torch.float32, device=device)
    rows = [[m for m, _ in shapes], [n for _, n in shapes]]
    rows += [
        [T.data_ptr() + 4 * s for s in starts[:-1]] if seq is None else [t.data_ptr() for t in seq] for seq in fields
    ]
    tensors = [t for seq in fields if seq is not None for t in seq]
    aligned = all_aligned([s for shape in shapes for s in shape], tensors) and T.data_ptr() % 16 == 0
    return GroupedLaunch(
        table=address_table(rows, device),
        scratch=T,
        layers=dict(LAYERS=len(shapes), LAYERS_POW2=max(16, triton.next_power_of_2(len(shapes)))),
        extent=dict(MAX_M=max(m for m, _ in shapes), MAX_N=max(n for _, n in shapes), TOTAL=starts[-1]),
        modes=dict(DTYPE=TL_DTYPES[dtype], PRECISION=precision, ALIGNED=aligned),
        shapes=shapes,
    )


# ----------------------------------------------------------------------------------------------- autotuning
#: ``FLS_AUTOTUNE``: "full" (default) tunes over every config below; "quick" over three (a bounded search for
#: time-limited runs such as ``make gpu-check``). Read once, as the autotuner reads its configs once.
AUTOTUNE = os.environ.get("FLS_AUTOTUNE", "full")

# BLOCK_M, BLOCK_N, BLOCK_K, num_warps, num_stages
_GEMM_TILES = [
    (128, 256, 32, 8, 3),
    (256, 128, 32, 8, 3),
    (128, 128, 32, 8, 3),
    (128, 128, 32, 8, 4),
    (128, 64, 32, 4, 4),
    (64, 128, 32, 4, 4),
    (64, 64, 32, 4, 4),
    (64, 64, 64, 4, 3),
    (32, 64, 32, 4, 4),
    (16, 64, 32, 4, 4),
    (16, 32, 32, 2, 3),
]
#: the "quick" search: a large, a medium and a small tile (each kept by the size pruning for its problems)
_QUICK_TILES = [(128, 128, 32, 8, 3), (64, 64, 32, 4, 4), (16, 64, 32, 4, 4)]


def gemm_tiles(mode: str = AUTOTUNE) -> list[tuple[int, int, int, int, int]]:
    """(BLOCK_M, BLOCK_N, BLOCK_K, num_warps, num_stages) of the configs searched in ``mode`` ("full", "quick")."""
    if mode not in ("full", "quick"):
        raise ValueError(f"FLS_AUTOTUNE: expected 'full' or 'quick', got {mode!r}")
    return list(_QUICK_TILES if mode == "quick" else _GEMM_TILES)


def gemm_configs() -> list[triton.Config]:
    """Tile configs of the GEMM kernels (:func:`gemm_tiles`); a single small one under the interpreter (it never
    benchmarks).

    The large tiles are H100 choices: 128×128×32 fp32 operand tiles take 32 KiB of shared memory per stage,
    so 3–4 stages fit next to each other; 256-wide tiles for the big square/LLM layers; 64-deep K steps only
    for bf16, whose tiles are cast after loading. Small tiles keep 1-row and narrow layers from wasting work.
    Those that need more shared memory than the device has (on an A100: 128×128×32 in 4 stages and the
    256-wide tiles) are pruned at launch (:func:`prune_gemm_configs`).
    """
    if INTERPRET:
        return [triton.Config({"BLOCK_M": 32, "BLOCK_N": 32, "BLOCK_K": 32, "GROUP_M": 4}, num_warps=4, num_stages=1)]
    return [
        triton.Config({"BLOCK_M": bm, "BLOCK_N": bn, "BLOCK_K": bk, "GROUP_M": 8}, num_warps=w, num_stages=s)
        for bm, bn, bk, w, s in gemm_tiles()
    ]


def gemm_shared_bytes(block_m: int, block_n: int, block_k: int, num_stages: int) -> int:
    """Shared memory of one GEMM program with this tile config, an upper bound for every GEMM kernel here:

        (num_stages − 1) · (9·BM·BK + 4·BK·BN + 4·BK)  +  4·(BM·BK + BK·BN)  bytes

    — the K loop's loads of the stages in flight (at most two fp32 [BM, BK] operands and a byte mask on the left,
    as surgeon_update's W, A and prune; one fp32 [BK, BN] on the right; its [BK] slice of l), plus the fp32
    operand tiles the MMA reads from shared memory (Hopper's wgmma; Ampere's mma.sync needs less). It is exact
    for the largest kernel compiled for sm_90 in tf32 mode, and bounds every compiled config (``make
    gpu-compile`` checks it).
    """
    stage = 9 * block_m * block_k + 4 * block_k * block_n + 4 * block_k
    return (num_stages - 1) * stage + 4 * (block_m * block_k + block_k * block_n)


def shared_memory_limit() -> int:
    """Bytes of shared memory one program may use on the current device, as Triton checks at launch (A100:
    163 KiB, H100/H200: 227 KiB)."""
    from triton.runtime import driver

    active = driver.active
    return active.utils.get_device_properties(active.get_current_device())["max_shared_mem"]


def prune_gemm_configs(configs: list[triton.Config], named_args: dict, **kwargs) -> list[triton.Config]:
    """Drop configs whose tiles overhang the problem (``M``, ``N``, ``K`` or, for grouped launches, ``MAX_M``
    and ``MAX_N``) in any dimension, 64-deep K steps outside bf16 mode, and configs that need more shared memory
    than the current device has (:func:`gemm_shared_bytes`, :func:`shared_memory_limit`); keeps at least the
    smallest tile."""
    return keep_gemm_configs(configs, {**named_args, **kwargs}, shared_memory_limit())


def keep_gemm_configs(configs: list[triton.Config], args: dict, shared_limit: int) -> list[triton.Config]:
    """:func:`prune_gemm_configs` for a device with ``shared_limit`` bytes of shared memory per program."""
    m = args.get("M", args.get("MAX_M"))
    n = args.get("N", args.get("MAX_N"))
    k = args.get("K", max(m, n))
    precision = args.get("PRECISION")
    floor_m = min(c.kwargs["BLOCK_M"] for c in configs)
    floor_n = min(c.kwargs["BLOCK_N"] for c in configs)
    floor_k = min(c.kwargs["BLOCK_K"] for c in configs)
    kept = [
        c
        for c in configs
        if c.kwargs["BLOCK_M"] <= max(floor_m, triton.next_power_of_2(m))
        and c.kwargs["BLOCK_N"] <= max(floor_n, triton.next_power_of_2(n))
        and c.kwargs["BLOCK_K"] <= max(floor_k, triton.next_power_of_2(k))
        and (c.kwargs["BLOCK_K"] == floor_k or precision == "bf16")
        and gemm_shared_bytes(c.kwargs["BLOCK_M"], c.kwargs["BLOCK_N"], c.kwargs["BLOCK_K"], c.num_stages)
        <= shared_limit
    ]
    return kept or [min(configs, key=lambda c: c.kwargs["BLOCK_M"] * c.kwargs["BLOCK_N"] * c.kwargs["BLOCK_K"])]


def persistent_programs(device: torch.device, meta: dict, tiles: int) -> int:
    """Programs of a persistent (grouped) launch with tile config ``meta``: one per SM for tiles of 128×128 and
    up (8 warps and 100+ KiB of pipelined operands leave no room for a second), two per SM for smaller ones;
    never more than there are tiles. A few under the interpreter, which runs programs one after another."""
    if device.type != "cuda":
        return max(1, min(tiles, 4))
    per_sm = 1 if meta["BLOCK_M"] * meta["BLOCK_N"] >= 128 * 128 else 2
    return max(1, min(tiles, per_sm * torch.cuda.get_device_properties(device).multi_processor_count))


def elementwise_blocks(m: int, n: int) -> tuple[int, int]:
    """(BLOCK_M, BLOCK_N) of a memory-bound [m, n] kernel: rows of up to 128 contiguous columns (512-byte
    coalesced fp32 reads per warp row), about 4096 elements per program."""
    block_n = min(128, triton.next_power_of_2(n))
    block_m = min(triton.next_power_of_2(m), max(1, 4096 // block_n))
    return block_m, block_n
