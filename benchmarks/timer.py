"""Median wall time of a call: ``triton.testing.do_bench`` on CUDA, ``torch.utils.benchmark`` on the CPU; device
synchronisation and peak CUDA memory around timed regions; the time limit of a run (:class:`Deadline`)."""

from __future__ import annotations

import time
from collections.abc import Callable


class Deadline:
    """A run's time limit: no measurement starts once ``seconds`` have passed since construction (None: none), and
    what is not started says so (:meth:`note`), so a time-limited run still tabulates every row."""

    def __init__(self, seconds: float | None) -> None:
        self.seconds = seconds
        self.end = None if seconds is None else time.perf_counter() + seconds

    def spent(self) -> bool:
        """Whether the time is up."""
        return self.end is not None and time.perf_counter() > self.end

    def note(self) -> str | None:
        """The row note of a measurement not started because the time is up; None while there is time."""
        return f"not timed: the run's {self.seconds:.0f} s were spent" if self.spent() else None


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


def sync(device: str) -> None:
    """Wait for the device's queued work (CUDA); nothing on the CPU."""
    if device == "cuda":
        import torch

        torch.cuda.synchronize()


def reset_peak(device: str) -> None:
    """Start a peak-memory measurement (CUDA); nothing on the CPU."""
    if device == "cuda":
        import torch

        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()


def peak_mib(device: str) -> float | None:
    """Peak allocated MiB since :func:`reset_peak` on CUDA; None on the CPU."""
    if device != "cuda":
        return None
    import torch

    torch.cuda.synchronize()
    return torch.cuda.max_memory_allocated() / 2**20
