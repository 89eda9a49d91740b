"""The CUDA kernels of the extension on large inputs (10⁷–10⁸ scores, real layer shapes) against the reference.

Skipped, with the reason, where torch sees no CUDA device or the extension was built without CUDA kernels.
"""

from __future__ import annotations

import math

import pytest
import torch

import fls_kernels as fls
import fls_reference as ref
from fls_kernels import backends
from fls_kernels.testing import assert_close, cast, random_problem, tolerance

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.ext,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
]


def _cuda(op: str) -> str:
    why = backends.get_backend("cuda").reason(op, torch.device("cuda"), torch.float32)
    if why is not None:
        pytest.skip(f"cuda {why}")
    return "cuda"


SELECT_SIZES = [
    pytest.param([10**7], id="1e7-one-tensor"),
    pytest.param([4 * 10**7, 3, 0, 6 * 10**7 + 17], id="1e8-with-empty-and-tiny"),
    pytest.param([5000] * 2000, id="1e7-in-2000-tensors"),
]


@pytest.mark.parametrize("sizes", SELECT_SIZES)
@pytest.mark.parametrize("kind", ["continuous", "ties"])
def test_select_smallest_large(sizes, kind):
    name = _cuda("select_smallest")
    g = torch.Generator(device="cuda").manual_seed(0)
    if kind == "continuous":
        scores = [torch.randn(n, device="cuda", generator=g).mul_(4).exp_() for n in sizes]
    else:
        scores = [torch.randint(0, 1000, (n,), device="cuda", generator=g).float() for n in sizes]
    scores[0][: min(1000, sizes[0])] = math.inf  # already pruned
    total = sum(sizes) - min(1000, sizes[0])
    for k in (0, 1, total // 3, total):
        expected = ref.select_smallest(scores, k)
        out = fls.select_smallest(scores, k, backend=name)
        for o, e in zip(out, expected):
            assert torch.equal(o, e)


def test_select_smallest_errors():
    name = _cuda("select_smallest")
    scores = [torch.zeros(10**6, device="cuda"), torch.zeros(3, device="cuda")]
    scores[1][1] = math.nan
    with pytest.raises(ValueError, match=r"scores\[1\]: contains NaN"):
        fls.select_smallest(scores, 1, backend=name)
    scores[1][1] = math.inf
    with pytest.raises(ValueError, match="k: 1000003 exceeds the 1000002"):
        fls.select_smallest(scores, 10**6 + 3, backend=name)


@pytest.mark.parametrize("n,m", [(2, 4), (1, 4), (3, 8)], ids=["2:4", "1:4", "3:8"])
def test_select_nm_large(n, m):
    name = _cuda("select_nm")
    scores = torch.randint(0, 5, (11008, 4096), device="cuda").float()
    scores[0, :8] = torch.tensor([math.nan, -0.0, 0.0, math.inf, 1.0, -math.inf, 0.0, -0.0])
    assert_close(fls.select_nm(scores, n, m, backend=name), ref.select_nm(scores, n, m), tol=0)


LAYERS = [pytest.param(11008, 4096, id="llama-mlp-11008x4096"), pytest.param(768, 3072, id="bert-ffn-768x3072")]


@pytest.mark.parametrize("m,n", LAYERS)
def test_elementwise_large(m, n):
    name = _cuda("obs_scores")
    e = random_problem(m, n, seed=1, device="cuda")
    p = cast(e, torch.float32, "cuda")
    out = fls.obs_scores(p["W"], p["A"], p["r"], p["l"], p["alive"], backend=name)
    expected = ref.obs_scores(e["W"], e["A"], e["r"], e["l"], e["alive"]).float()
    assert_close(out, expected, tol=tolerance(torch.float32), name="obs_scores")
    out = fls.kron_diag(p["A"], p["r"], p["l"], backend=name)
    assert_close(out, ref.kron_diag(e["A"], e["r"], e["l"]).float(), tol=tolerance(torch.float32))


@pytest.mark.parametrize("precision", ["fp32", "tf32", "bf16"])
@pytest.mark.parametrize("m,n", [pytest.param(4096, 4096, id="4096x4096"), pytest.param(3072, 768, id="3072x768")])
def test_gemm_ops_large(m, n, precision):
    name = _cuda("surgeon_update_")
    e = random_problem(m, n, seed=2, device="cuda")
    p = cast(e, torch.float32, "cuda")
    tol = tolerance(torch.float32, precision)
    out = fls.kron_qv(p["W"], p["A"], p["G_R"], p["G_L"], precision=precision, backend=name)
    assert_close(out, ref.kron_qv(e["W"], e["A"], e["G_R"], e["G_L"]).float(), tol=tol, name="kron_qv")
    W = p["W"].clone()
    fls.surgeon_update_(
        W, p["A"], p["G_R"], p["G_L"], p["r"], p["l"], p["prune"], p["keep"], precision=precision, backend=name
    )
    expected = ref.surgeon_update_(e["W"].clone(), e["A"], e["G_R"], e["G_L"], e["r"], e["l"], e["prune"], e["keep"])
    assert_close(W, expected.float(), tol=tol, name="surgeon_update_")
    assert (W[~p["keep"]] == 0).all()


def test_tf32_guard_restores_the_global_setting():
    name = _cuda("kron_qv")
    before = torch.get_float32_matmul_precision()
    p = cast(random_problem(64, 32, device="cuda"), torch.float32, "cuda")
    fls.kron_qv(p["W"], p["A"], p["G_R"], p["G_L"], precision="tf32", backend=name)
    assert torch.get_float32_matmul_precision() == before
