"""The machine's ceilings, measured in the same run as the kernels they judge (never datasheet numbers).

- copy bandwidth: bytes read + written per second by ``dst.copy_(src)`` on a buffer far larger than the caches;
- GEMM rate: FLOP/s of ``torch.mm`` on square matrices in each precision mode — fp32 with TF32 off (IEEE),
  tf32 (TF32 tensor cores allowed), bf16 (bf16 operands; fp32 accumulation).

``% roofline`` of a kernel is then the time the faster of its compute and memory bounds needs at these rates,
over its measured time.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass

import torch

from benchmarks.timer import median_ms

#: (copy bytes, GEMM size) per device: a few GB and 8192³ on a GPU; what a 2-core CPU does in a second.
SIZES = {"cuda": (2 * 2**30, 8192), "cpu": (64 * 2**20, 1024)}


@dataclass(frozen=True)
class Peaks:
    """Measured ceilings: ``bandwidth`` in bytes/s (read + write), ``flops`` per precision mode in FLOP/s."""

    bandwidth: float
    flops: dict[str, float]

    def roofline_ms(self, flops: float, nbytes: float, precision: str) -> float | None:
        """Milliseconds of the bound: max(flops / GEMM rate, bytes / bandwidth); None without that rate."""
        rate = self.flops.get(precision)
        return None if rate is None else 1e3 * max(flops / rate, nbytes / self.bandwidth)

    def describe(self) -> str:
        """One line for a table's header."""
        gemm = ", ".join(f"{p} GEMM {r / 1e12:.1f} TFLOP/s" for p, r in self.flops.items())
        return f"ceilings measured in this run: copy {self.bandwidth / 1e9:.0f} GB/s, {gemm}"


@contextlib.contextmanager
def matmul_mode(precision: str) -> Iterator[None]:
    """torch's float32 matmuls in ``precision`` inside the block ("tf32": TF32 allowed, else IEEE fp32)."""
    before = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = precision == "tf32"
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32 = before


def copy_bandwidth(device: str, nbytes: int) -> float:
    """Bytes read + written per second by a device copy of ``nbytes`` of fp32."""
    src = torch.rand(nbytes // 4, device=device)
    dst = torch.empty_like(src)
    return 2 * src.numel() * 4 / (median_ms(lambda: dst.copy_(src), device) * 1e-3)


def measure(device: str, precisions: tuple[str, ...] = ("fp32",), sizes: tuple[int, int] | None = None) -> Peaks:
    """Copy bandwidth and the GEMM rate of each of ``precisions`` on ``device`` (median of repeated runs)."""
    copy_bytes, n = sizes or SIZES[device]
    bandwidth = copy_bandwidth(device, copy_bytes)
    flops = {}
    for precision in precisions:
        dtype = torch.bfloat16 if precision == "bf16" else torch.float32
        a, b = (torch.rand(n, n, device=device).to(dtype) for _ in range(2))
        with matmul_mode(precision):
            ms = median_ms(lambda a=a, b=b: torch.mm(a, b), device)
        flops[precision] = 2 * n**3 / (ms * 1e-3)
    return Peaks(bandwidth, flops)
