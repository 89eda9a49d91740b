"""Shared fixtures. Every backend output is NaN-poisoned for the whole session (``FLS_POISON=1``, the default;
``FLS_POISON=0`` turns it off) so unwritten entries fail the checks; without CUDA, Triton kernels run through
the interpreter."""

from __future__ import annotations

import os

try:
    import torch

    if not torch.cuda.is_available():
        os.environ.setdefault("TRITON_INTERPRET", "1")
except ImportError:  # pragma: no cover
    pass

import pytest  # noqa: E402
import torch  # noqa: E402

from fls_kernels import backends, testing  # noqa: E402


def pytest_configure(config):
    if os.environ.get("FLS_POISON", "1") == "1":
        testing.install_poison()


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
