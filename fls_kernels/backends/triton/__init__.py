"""The Triton backend: one module per op, each with private ``@triton.jit`` kernels and one launcher.

On CUDA it is picked automatically; on the CPU it runs through Triton's interpreter (``TRITON_INTERPRET=1``)
and only on explicit request, which is how the test suite checks its kernels without a GPU.
"""

from __future__ import annotations

import importlib
import os
from collections.abc import Callable

import torch

from fls_kernels.backends import Backend

#: op name → module in this package holding its launcher (a function of the same name).
_OP_MODULES: dict[str, str] = {
    "kron_qv": "kron_qv",
    "kron_diag": "kron_diag",
    "obs_scores": "obs_scores",
    "select_nm": "select_nm",
    "surgeon_update_": "surgeon_update",
    "kron_qv_grouped": "kron_qv_grouped",
    "surgeon_update_grouped_": "surgeon_update_grouped",
}


def _load() -> dict[str, Callable]:
    import triton  # noqa: F401

    if not torch.cuda.is_available() and not _INTERPRET:
        raise RuntimeError("no CUDA device and TRITON_INTERPRET is not 1")
    kernels = {}
    for op, module in _OP_MODULES.items():
        kernels[op] = getattr(importlib.import_module(f"{__name__}.{module}"), op)
    return kernels


# Compiled kernels take CUDA tensors; interpreted ones run on host memory (the grouped kernels dereference
# addresses taken from the tensors, so the interpreter cannot stand in for a GPU with CUDA tensors).
_INTERPRET = os.environ.get("TRITON_INTERPRET", "0") == "1"

BACKENDS = [
    Backend(
        name="triton",
        priority=30,
        devices=("cpu",) if _INTERPRET else ("cuda",),
        auto_devices=("cuda",),
        dtypes=(torch.float32, torch.bfloat16, torch.float16),
        loader=_load,
        fix="install `triton` and run on a CUDA device (or set TRITON_INTERPRET=1 to interpret on the CPU)",
    )
]
