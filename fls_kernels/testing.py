"""Shared test and benchmark helpers: the tolerance table, awkward shapes, poisoned outputs, error checks.

Imported by the tests and the benchmarks, never by the library. The tolerance table and ``rel_error`` live in
:mod:`fls_kernels.tolerances`, and the layer problems and the op table's argument binding in
:mod:`fls_kernels.backends.problems` (``compare`` uses them too); both are re-exported here.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator

import torch

from fls_kernels.backends import alloc
from fls_kernels.backends.problems import bind, cast, example, random_problem
from fls_kernels.tolerances import TOLERANCES, rel_error, tolerance

#: (id, m, n) matrix shapes that stress tiling: a single row or column, primes, block sizes ± 1, tall, wide.
AWKWARD_SHAPES: list[tuple[str, int, int]] = [
    ("1x1", 1, 1),
    ("1-row", 1, 37),
    ("1-col", 29, 1),
    ("primes", 13, 7),
    ("block+1", 17, 33),
    ("block-1", 31, 63),
    ("tall", 129, 5),
    ("wide", 3, 130),
]


def poisoned_empty(
    shape: tuple[int, ...] | torch.Size, *, dtype: torch.dtype, device: torch.device | str
) -> torch.Tensor:
    """``torch.empty`` pre-filled with NaN (floats), True (bool) or −1 (ints), so unwritten entries show."""
    out = torch.empty(shape, dtype=dtype, device=device)
    if dtype.is_floating_point:
        out.fill_(math.nan)
    elif dtype == torch.bool:
        out.fill_(True)
    else:
        out.fill_(-1)
    return out


def install_poison() -> alloc.Allocator:
    """From now on every backend output and temporary is allocated by :func:`poisoned_empty` (tests/conftest.py
    does this for the whole session when ``FLS_POISON=1``, the default); returns the previous allocator."""
    return alloc.set_allocator(poisoned_empty)


@contextlib.contextmanager
def poison_outputs() -> Iterator[None]:
    """Inside the ``with`` block backend outputs and temporaries are allocated by :func:`poisoned_empty`."""
    with alloc.allocator(poisoned_empty):
        yield


def poison_enabled() -> bool:
    """True when backend outputs are being poisoned now (:func:`install_poison` or :func:`poison_outputs`)."""
    return alloc.get_allocator() is poisoned_empty


def assert_close(actual: torch.Tensor, expected: torch.Tensor, *, tol: float, name: str = "result") -> None:
    """Assert shape and dtype match, NaN/±inf appear exactly where ``expected`` has them, and rel_error ≤ tol.

    NaN in ``actual`` never passes unless ``expected`` has NaN in the same place.
    """
    assert actual.shape == expected.shape, f"{name}: shape {tuple(actual.shape)} != {tuple(expected.shape)}"
    assert actual.dtype == expected.dtype, f"{name}: dtype {actual.dtype} != {expected.dtype}"
    a = actual.detach().cpu()
    e = expected.detach().cpu()
    if a.dtype == torch.bool or not a.dtype.is_floating_point:
        bad = int((a != e).sum())
        assert bad == 0, f"{name}: {bad} of {a.numel()} entries differ"
        return
    nan_a, nan_e = torch.isnan(a), torch.isnan(e)
    assert torch.equal(nan_a, nan_e), f"{name}: NaN at {int((nan_a & ~nan_e).sum())} unexpected places"
    inf_e = torch.isinf(e)
    assert torch.equal(torch.isinf(a), inf_e) and torch.equal(a[inf_e], e[inf_e]), f"{name}: ±inf pattern differs"
    err = rel_error(a, e)
    assert err <= tol, f"{name}: relative error {err:.3e} > tolerance {tol:.1e}"


__all__ = [
    "AWKWARD_SHAPES",
    "TOLERANCES",
    "assert_close",
    "bind",
    "cast",
    "example",
    "install_poison",
    "poison_enabled",
    "poison_outputs",
    "poisoned_empty",
    "random_problem",
    "rel_error",
    "tolerance",
]
