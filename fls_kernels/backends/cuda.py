"""Loader of the compiled extension ``fls_kernels._C`` and the ``cpu`` / ``cuda`` backends it provides.

The extension declares one internal op ``torch.ops.fls._<stem>`` per native op (``fls::_kron_qv``, ...) and
registers its CPU kernels and, when built with CUDA, its CUDA kernels for it; the dispatcher picks by the
tensors' device. The ops write into outputs allocated here through :func:`fls_kernels.backends.alloc.empty`
(so tests can poison them), or update their first argument in place. Both backends share one launcher per op,
built from the op table; which ops a backend has is asked of the dispatcher. Importing this module never
fails: a missing or broken build is recorded and reported when the backend is requested.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from fls_kernels.backends import Backend, table
from fls_kernels.backends.alloc import empty
from fls_kernels.backends.table import Output

_BUILD_FIX = (
    "install with `FLS_BUILD_EXT=1 pip install --no-build-isolation -e .` (needs a C++20 compiler; nvcc for cuda)"
)


def _import_extension() -> None:
    import fls_kernels._C  # noqa: F401  (loading the library registers its ops)


def _outputs(output: Output, first):
    """The results of an op whose outputs are allocated as ``output`` says, from its first argument."""
    if output is Output.LIKE_FIRST:
        return empty(first.shape, dtype=first.dtype, device=first.device)
    if output is Output.MASK_LIKE_FIRST:
        return empty(first.shape, dtype=torch.bool, device=first.device)
    if output is Output.MASKS_LIKE_EACH:
        return [empty(t.shape, dtype=torch.bool, device=t.device) for t in first]
    return None


def _launcher(op: table.Op) -> Callable:
    """The launcher of ``op`` with the reference's signature: fls::_<stem>(*args[, precision][, outputs])."""
    native = getattr(torch.ops.fls, f"_{op.stem}")

    def launch(*args, precision: str = "fp32"):
        outputs = _outputs(op.output, args[0])
        native(*args, *((precision,) if op.precision else ()), *(() if outputs is None else (outputs,)))
        return args[0] if outputs is None else outputs

    launch.__name__ = launch.__qualname__ = op.name
    return launch


def _has_kernel(op: table.Op, dispatch_key: str) -> bool:
    """Whether the extension declared ``fls::_<stem>`` (the grouped ops have no native op) and registered a kernel
    for ``dispatch_key`` ('CPU' or 'CUDA') — asked of the dispatcher."""
    name = f"_{op.stem}"
    return hasattr(torch.ops.fls, name) and torch._C._dispatch_has_kernel_for_dispatch_key(f"fls::{name}", dispatch_key)


def _launchers(dispatch_key: str) -> dict[str, Callable]:
    """Launchers of the ops with a native kernel for ``dispatch_key``."""
    return {op.name: _launcher(op) for op in table.TABLE if _has_kernel(op, dispatch_key)}


def _load_cpu() -> dict[str, Callable]:
    _import_extension()
    return _launchers("CPU")


def _load_cuda() -> dict[str, Callable]:
    _import_extension()
    if not torch.cuda.is_available():
        raise RuntimeError("torch sees no CUDA device")
    kernels = _launchers("CUDA")
    if not kernels:
        raise RuntimeError("fls_kernels._C was built without CUDA kernels (torch without CUDA or no nvcc at build)")
    return kernels


BACKENDS = [
    Backend(
        name="cuda",
        priority=20,
        devices=("cuda",),
        dtypes=(torch.float32,),
        loader=_load_cuda,
        fix="run on a CUDA machine with the extension built there by nvcc: " + _BUILD_FIX,
    ),
    Backend(
        name="cpu",
        priority=10,
        devices=("cpu",),
        dtypes=(torch.float32, torch.float64),
        loader=_load_cpu,
        fix=_BUILD_FIX,
    ),
]
