"""The one allocation function of the backends: every kernel output and temporary comes from :func:`empty`.

It calls a swappable allocator, ``torch.empty`` unless one is set. Tests swap in one that pre-fills NaN so
entries a kernel forgets to write show up (:func:`fls_kernels.testing.poison_outputs`); production code never
swaps it and reads no environment variable for it.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator

import torch

#: (shape, *, dtype, device) → an uninitialised tensor, as ``torch.empty``.
Allocator = Callable[..., torch.Tensor]

_allocator: Allocator = torch.empty


def empty(shape: tuple[int, ...] | torch.Size, *, dtype: torch.dtype, device: torch.device | str) -> torch.Tensor:
    """An uninitialised tensor from the current allocator (``torch.empty`` unless swapped)."""
    return _allocator(shape, dtype=dtype, device=device)


def get_allocator() -> Allocator:
    """The allocator :func:`empty` calls now."""
    return _allocator


def set_allocator(fn: Allocator | None) -> Allocator:
    """Make :func:`empty` call ``fn`` (None: ``torch.empty`` again) in every thread; returns the previous one."""
    global _allocator
    previous, _allocator = _allocator, (torch.empty if fn is None else fn)
    return previous


@contextlib.contextmanager
def allocator(fn: Allocator) -> Iterator[None]:
    """Inside the ``with`` block :func:`empty` calls ``fn``; the previous allocator is restored on leaving."""
    previous = set_allocator(fn)
    try:
        yield
    finally:
        set_allocator(previous)


__all__ = ["Allocator", "allocator", "empty", "get_allocator", "set_allocator"]
