"""The compiled extension: it loads, registers its CPU ops, and its own argument checks name the argument."""

from __future__ import annotations

import pytest
import torch

from fls_kernels import backends
from fls_kernels.testing import poison_outputs

pytestmark = pytest.mark.ext


@pytest.fixture(scope="module", autouse=True)
def _extension():
    why = backends.get_backend("cpu").load()
    if why is not None:
        pytest.skip(f"fls_kernels._C is not built: {why}")


def test_cpu_backend_registers_the_elementwise_and_gemm_ops():
    kernels = backends.get_backend("cpu").kernels
    assert {"kron_qv", "kron_diag", "obs_scores", "surgeon_update_"} <= set(kernels)
    assert torch._C._dispatch_has_kernel_for_dispatch_key("fls::_obs_scores", "CPU")


def test_native_checks_raise_value_and_type_errors_naming_the_argument():
    A, r, l = torch.ones(3, 4), torch.ones(3), torch.ones(4)
    with pytest.raises(ValueError, match="l: expected shape"):
        torch.ops.fls._kron_diag(A, r, torch.ones(5), torch.empty(3, 4))
    with pytest.raises(TypeError, match="r: expected dtype"):
        torch.ops.fls._kron_diag(A, r.double(), l, torch.empty(3, 4))
    with pytest.raises(ValueError, match="out: must be contiguous"):
        torch.ops.fls._kron_diag(A, r, l, torch.empty(4, 3).T)
    with pytest.raises(ValueError, match="precision"):
        torch.ops.fls._kron_qv(A, A, torch.eye(3), torch.eye(4), "fp8", torch.empty(3, 4))
    with pytest.raises(TypeError, match="mask: expected dtype"):
        torch.ops.fls._obs_scores(A, A, r, l, torch.ones(3, 4), torch.empty(3, 4))


def test_poisoned_outputs_are_fully_written():
    A = torch.rand(37, 5) + 0.1
    with poison_outputs():
        out = backends.kernel("cpu", "kron_diag")(A, torch.rand(37), torch.rand(5))
    assert torch.isfinite(out).all()
