"""The Triton backend: one module per op, named by the op's kernel stem (``kron_qv.py``, ``surgeon_update.py``),
each with private ``@triton.jit`` kernels and one launcher named like the op. An op without a module here
(``select_smallest``) is one this backend does not implement.

On CUDA it is picked automatically; on the CPU it runs through Triton's interpreter (``TRITON_INTERPRET=1``)
and only on explicit request, which is how the test suite checks its kernels without a GPU.
"""

from __future__ import annotations

import importlib
import importlib.util
import os
from collections.abc import Callable

import torch

from fls_kernels.backends import Backend, table


def _load() -> dict[str, Callable]:
    """Every op of the table whose kernel module ``<stem>.py`` exists here: its launcher, named like the op."""
    import triton  # noqa: F401

    if not torch.cuda.is_available() and not _INTERPRET:
        raise RuntimeError("no CUDA device and TRITON_INTERPRET is not 1")
    kernels = {}
    for op in table.TABLE:
        module = f"{__name__}.{op.stem}"
        if importlib.util.find_spec(module) is not None:
            kernels[op.name] = getattr(importlib.import_module(module), op.name)
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
