"""Shared fixtures. Every backend output is NaN-poisoned (FLS_POISON=1) so unwritten entries fail the checks;
without CUDA, Triton kernels run through the interpreter."""

from __future__ import annotations

import os

os.environ.setdefault("FLS_POISON", "1")
try:
    import torch

    if not torch.cuda.is_available():
        os.environ.setdefault("TRITON_INTERPRET", "1")
except ImportError:  # pragma: no cover
    pass

import pytest  # noqa: E402
import torch  # noqa: E402

from fls_kernels import backends  # noqa: E402


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
    yield


def devices() -> list[str]:
    """Devices the suite runs on: cpu, plus cuda where present."""
    return ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


def backend_or_skip(name: str, op: str, device: str, dtype: torch.dtype) -> str:
    """``name`` if it can run ``op`` here, else skip with the registry's reason."""
    why = backends.get_backend(name).reason(op, torch.device(device), dtype)
    if why is not None:
        pytest.skip(f"{name} {why}")
    return name
