"""N:M selection: in each group of M consecutive entries of a row, mark the N smallest (lower column on ties).

Each program holds a [BLOCK_R, BLOCK_G, M_POW2] tile (rows × groups × members). An entry is chosen when its
rank — how many members of its group come before it in (score, column) order — is below N. The rank is built
from M compares against every member (M is small: 2:4, 4:8, 16), so the result is exact and deterministic,
with no sort. NaN ranks after every number, like ``torch.sort``.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from fls_kernels.backends.alloc import empty
from fls_kernels.backends.triton._common import on_device


@triton.jit
def _select_nm_kernel(
    S, out, rows, groups, s_r, s_c, N_SEL: tl.constexpr, M: tl.constexpr, M_POW2: tl.constexpr,
    BLOCK_R: tl.constexpr, BLOCK_G: tl.constexpr,
):  # fmt: skip
    """out[tile] = rank(S[tile] within its group) < N_SEL; ``out`` is a contiguous byte view of a bool tensor."""
    rr = tl.program_id(0) * BLOCK_R + tl.arange(0, BLOCK_R)
    gg = tl.program_id(1) * BLOCK_G + tl.arange(0, BLOCK_G)
    cc = tl.arange(0, M_POW2)
    ok2 = (rr < rows)[:, None] & (gg < groups)[None, :]
    ok = ok2[:, :, None] & (cc < M)[None, None, :]
    rr64 = rr.to(tl.int64)
    col = gg[None, :, None] * M + cc[None, None, :]
    s = tl.load(S + rr64[:, None, None] * s_r + col * s_c, mask=ok, other=0.0).to(tl.float32)
    s_nan = s != s
    rank = tl.zeros((BLOCK_R, BLOCK_G, M_POW2), dtype=tl.int32)
    member = S + rr64[:, None] * s_r + (gg[None, :] * M) * s_c
    for j in tl.static_range(M):
        t = tl.load(member + j * s_c, mask=ok2, other=0.0).to(tl.float32)[:, :, None]
        t_nan = t != t
        before = (t < s) | (s_nan & ~t_nan)
        tie = (t == s) | (s_nan & t_nan)
        rank += (before | (tie & (j < cc[None, None, :]))).to(tl.int32)
    chosen = (rank < N_SEL).to(tl.uint8)
    tl.store(out + rr64[:, None, None] * (groups * M) + col, chosen, mask=ok)


def select_nm(scores: torch.Tensor, n: int, m: int) -> torch.Tensor:
    """In every group of ``m`` consecutive entries of each row, mark the ``n`` smallest (ties: lower column).

    Args:
        scores: [rows, cols] (fp32, bf16 or fp16), cols divisible by m, any strides; 0 ≤ n ≤ m.

    Returns:
        [rows, cols] bool, exactly n True per group.
    """
    rows, cols = scores.shape
    out = empty((rows, cols), dtype=torch.bool, device=scores.device)
    if rows == 0 or cols == 0:
        return out
    groups = cols // m
    m_pow2 = triton.next_power_of_2(m)
    # About 2048 scores per program: whole groups along a row, then as many rows as fit.
    block_g = min(triton.next_power_of_2(groups), max(1, 256 // m_pow2))
    block_r = min(triton.next_power_of_2(rows), max(1, 2048 // (block_g * m_pow2)))
    grid = (triton.cdiv(rows, block_r), triton.cdiv(groups, block_g))
    with on_device(scores):
        _select_nm_kernel[grid](
            scores, out.view(torch.uint8), rows, groups, *scores.stride(), n, m, m_pow2, block_r, block_g
        )
    return out
