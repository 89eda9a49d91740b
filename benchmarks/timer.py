"""Median wall time of a call: ``triton.testing.do_bench`` on CUDA, ``torch.utils.benchmark`` on the CPU."""

from __future__ import annotations

from collections.abc import Callable


def median_ms(call: Callable[[], object], device: str, min_run_time: float = 0.5, num_threads: int = 1) -> float:
    """Median milliseconds of ``call()`` after one warm-up call: triton.testing.do_bench on CUDA,
    torch.utils.benchmark on CPU (at least ``min_run_time`` seconds of runs, with ``num_threads`` torch threads)."""
    call()
    if device == "cuda":
        import triton.testing

        return float(triton.testing.do_bench(call, return_mode="median"))
    from torch.utils import benchmark

    timer = benchmark.Timer("call()", globals={"call": call}, num_threads=num_threads)
    return timer.blocked_autorange(min_run_time=min_run_time).median * 1e3
