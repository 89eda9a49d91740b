"""Where a prune spends its time: wall-clock sections recorded while :func:`record` is active.

    with fls_kernels.timing.record() as times:
        pruner.fit(loader, steps=200)
        pruner.prune(0.8, substeps=4)
    print(times)   # {'statistics': …, 'fvp': …, 'q_products': …, 'scoring': …, 'selection': …, 'update': …}

Sections: ``statistics`` (initialisation / recomputation passes over data), ``fvp`` (Fisher-vector products),
``q_products`` (Q(λ) products of the aux loss, its backward and the Adam step on λ), ``scoring``, ``selection``
and ``update`` (the surgeon's weight update and masking), and ``communication`` (collectives of a distributed
pruner that move vectors or weights between ranks). On CUDA each section synchronises the device at
its ends, so recording serialises work that would otherwise overlap. Outside :func:`record` (and under
``torch.compile``) sections cost one global read.
"""

from __future__ import annotations

import contextlib
import time
from collections import defaultdict
from collections.abc import Iterator

import torch

_times: dict[str, float] | None = None


@contextlib.contextmanager
def record() -> Iterator[dict[str, float]]:
    """Collect seconds per section inside the block (sections nest: time goes to the innermost only)."""
    global _times
    previous, _times = _times, defaultdict(float)
    result = _times
    try:
        yield result
    finally:
        _times = previous


@contextlib.contextmanager
def section(name: str) -> Iterator[None]:
    """Attribute the wall time of the block to ``name`` while recording."""
    if _times is None or torch.compiler.is_compiling():
        yield
        return
    _sync()
    outer = dict(_times)
    start = time.perf_counter()
    try:
        yield
    finally:
        _sync()
        elapsed = time.perf_counter() - start
        nested = sum(_times[k] - outer.get(k, 0.0) for k in _times)
        _times[name] += elapsed - nested


def _sync() -> None:
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        torch.cuda.synchronize()
