"""Loader of the compiled extension ``fls_kernels._C`` and the ``cpu`` / ``cuda`` backends it provides.

The extension registers internal ops ``torch.ops.fls._<op>_{cpu,cuda}`` that write into outputs allocated
here (so ``FLS_POISON=1`` poisons them). Importing this module never fails: a missing or broken build is
recorded and reported when the backend is requested.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from fls_kernels.backends import Backend
from fls_kernels.testing import empty

_BUILD_FIX = (
    "install with `FLS_BUILD_EXT=1 pip install --no-build-isolation -e .` (needs a C++20 compiler; nvcc for cuda)"
)


def _import_extension() -> None:
    import fls_kernels._C  # noqa: F401  (loading the library registers its ops)


def _has(name: str) -> bool:
    return hasattr(torch.ops.fls, name)


def _launchers(suffix: str) -> dict[str, Callable]:
    """Python launchers for the ops the extension registered with ``suffix`` ('cpu' or 'cuda')."""

    def kron_qv(V, A, G_R, G_L, *, precision="fp32"):
        out = empty(V.shape, dtype=V.dtype, device=V.device)
        getattr(torch.ops.fls, f"_kron_qv_{suffix}")(V, A, G_R, G_L, precision, out)
        return out

    def kron_diag(A, r, l):
        out = empty(A.shape, dtype=A.dtype, device=A.device)
        getattr(torch.ops.fls, f"_kron_diag_{suffix}")(A, r, l, out)
        return out

    def obs_scores(W, A, r, l, mask):
        out = empty(W.shape, dtype=W.dtype, device=W.device)
        getattr(torch.ops.fls, f"_obs_scores_{suffix}")(W, A, r, l, mask, out)
        return out

    def select_smallest(scores, k):
        outs = [empty(s.shape, dtype=torch.bool, device=s.device) for s in scores]
        getattr(torch.ops.fls, f"_select_smallest_{suffix}")(list(scores), k, outs)
        return outs

    def select_nm(scores, n, m):
        out = empty(scores.shape, dtype=torch.bool, device=scores.device)
        getattr(torch.ops.fls, f"_select_nm_{suffix}")(scores, n, m, out)
        return out

    def surgeon_update_(W, A, G_R, G_L, r, l, prune, keep, *, precision="fp32"):
        getattr(torch.ops.fls, f"_surgeon_update_{suffix}")(W, A, G_R, G_L, r, l, prune, keep, precision)
        return W

    candidates = {
        "kron_qv": kron_qv,
        "kron_diag": kron_diag,
        "obs_scores": obs_scores,
        "select_smallest": select_smallest,
        "select_nm": select_nm,
        "surgeon_update_": surgeon_update_,
    }
    return {op: fn for op, fn in candidates.items() if _has(f"_{op.rstrip('_')}_{suffix}")}


def _load_cpu() -> dict[str, Callable]:
    _import_extension()
    return _launchers("cpu")


def _load_cuda() -> dict[str, Callable]:
    _import_extension()
    if not torch.cuda.is_available():
        raise RuntimeError("torch sees no CUDA device")
    kernels = _launchers("cuda")
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
