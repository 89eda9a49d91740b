"""The tolerance table and the relative error it bounds, shared by ``python -m fls_kernels compare``, the tests
and the benchmarks' verify step (the latter two through :mod:`fls_kernels.testing`)."""

from __future__ import annotations

import torch

#: Maximum relative error (max-norm, against a float64 reference) per compute mode.
TOLERANCES: dict[str, float] = {
    "fp64": 1e-10,
    "fp32": 1e-5,
    # TF32 keeps 10 mantissa bits; Hopper's wgmma truncates fp32 operands rather than rounding them, which
    # biases every product by up to 2⁻¹⁰: measured 1–2e-3 on these ops (3e-4 holds only for rounded operands).
    "tf32": 2e-3,
    "fp16": 2e-3,
    "bf16": 1e-2,
}

_DTYPE_MODE = {torch.float64: "fp64", torch.float32: "fp32", torch.float16: "fp16", torch.bfloat16: "bf16"}


def tolerance(dtype: torch.dtype, precision: str = "fp32") -> float:
    """The relative tolerance for results computed in ``dtype`` with GEMM mode ``precision`` (the looser)."""
    mode = _DTYPE_MODE.get(dtype)
    if mode is None:
        raise TypeError(f"dtype: no tolerance for {dtype}")
    return max(TOLERANCES[mode], TOLERANCES[precision]) if mode != "fp64" else TOLERANCES[mode]


def rel_error(actual: torch.Tensor, expected: torch.Tensor) -> float:
    """max|actual − expected| / max|expected| over finite entries, in float64 (0 when both are all zero)."""
    a = actual.detach().to(torch.float64)
    e = expected.detach().to(torch.float64)
    finite = torch.isfinite(e)
    if not finite.any():
        return 0.0
    scale = e[finite].abs().max().item()
    err = (a[finite] - e[finite]).abs().max().item()
    if scale == 0.0:
        return err
    return err / scale


__all__ = ["TOLERANCES", "rel_error", "tolerance"]
