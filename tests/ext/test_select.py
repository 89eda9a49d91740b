"""The native selection kernels against the reference on awkward inputs: empty and 1-element tensors, ties,
±inf, -0.0 beside +0.0, k = 0 and k = every selectable score, inputs larger than one work chunk; errors."""

from __future__ import annotations

import math

import pytest
import torch

import fls_kernels as fls
import fls_reference as ref
from fls_kernels import backends
from fls_kernels.testing import assert_close

pytestmark = pytest.mark.ext

INF = math.inf
DTYPES = [pytest.param(torch.float32, id="fp32"), pytest.param(torch.float64, id="fp64")]


@pytest.fixture(scope="module", autouse=True)
def _cpu_select():
    for op in ("select_smallest", "select_nm"):
        why = backends.get_backend("cpu").reason(op, torch.device("cpu"), torch.float32)
        if why is not None:
            pytest.skip(f"cpu {why}")


def _ties(*shape: int) -> torch.Tensor:
    return torch.randint(-3, 4, shape, dtype=torch.float64)


def _signed_zeros() -> list[torch.Tensor]:
    z = torch.zeros(40, dtype=torch.float64)
    z[::2] = -0.0
    return [z, -z[:7], torch.tensor([1.0, -0.0, -1.0, 0.0], dtype=torch.float64)]


def _infinities() -> list[torch.Tensor]:
    a = _ties(13, 7)
    a[0, 0] = a[5, 2] = INF
    b = torch.tensor([-INF, INF, 0.0, -INF], dtype=torch.float64)
    return [a, b, torch.full((3,), INF, dtype=torch.float64)]


def _chunk_crossing() -> list[torch.Tensor]:
    # More than one 2^16 work chunk per tensor, many ties across chunk boundaries, one dominant value.
    return [
        torch.randint(0, 50, (150_001,), dtype=torch.float64),
        torch.full((90_000,), 7.0, dtype=torch.float64),
        torch.rand(70_000, dtype=torch.float64).exp(),
    ]


#: (id, scores builder) — builders so that each test gets fresh tensors from the seeded generator.
CASES = [
    pytest.param(lambda: [torch.empty(0), _ties(5), torch.empty(2, 0), _ties(1), torch.empty(0)], id="with-empties"),
    pytest.param(lambda: [_ties(1), _ties(1), _ties(1)], id="1-element"),
    pytest.param(lambda: [torch.tensor(2.0, dtype=torch.float64), _ties(3, 4)], id="0-dim"),
    pytest.param(lambda: [torch.full((17,), 0.25, dtype=torch.float64), torch.full((3, 3), 0.25)], id="all-equal"),
    pytest.param(_signed_zeros, id="signed-zeros"),
    pytest.param(_infinities, id="infinities"),
    pytest.param(lambda: [_ties(13, 7), _ties(3, 5, 11), _ties(129), _ties(1)], id="awkward-shapes"),
    pytest.param(lambda: [_ties(40, 30).T], id="non-contiguous"),
    pytest.param(lambda: [_ties(2) for _ in range(64)], id="many-tensors"),
    pytest.param(_chunk_crossing, id="chunk-crossing"),
]


def _selectable(scores: list[torch.Tensor]) -> int:
    return sum(int((s < INF).sum()) for s in scores)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("make", CASES)
@pytest.mark.parametrize("fraction", [0.0, 0.01, 0.5, 0.99, 1.0], ids=["k=0", "k=1%", "k=50%", "k=99%", "k=all"])
def test_select_smallest_matches_reference(make, dtype, fraction):
    scores = [s.to(dtype) for s in make()]
    k = round(fraction * _selectable(scores))
    expected = ref.select_smallest([s.double() for s in scores], k)
    out = fls.select_smallest(scores, k, backend="cpu")
    assert sum(int(o.sum()) for o in out) == k
    for i, (o, e) in enumerate(zip(out, expected)):
        assert_close(o, e, tol=0, name=f"mask {i}")


@pytest.mark.parametrize("dtype", DTYPES)
def test_select_smallest_on_continuous_scores(dtype):
    # OBS-like scores spread over many decades: the threshold's bin is small, so its keys are compacted.
    scores = [torch.randn(300_000, dtype=dtype).mul(6).exp(), torch.rand(1000, dtype=dtype)]
    for k in (1, 12_345, 150_500, 301_000):
        expected = ref.select_smallest(scores, k)
        for o, e in zip(fls.select_smallest(scores, k, backend="cpu"), expected):
            assert_close(o, e, tol=0)


@pytest.mark.parametrize("dtype", DTYPES)
def test_select_smallest_nan_raises_value_error_naming_the_tensor(dtype):
    scores = [torch.zeros(4, dtype=dtype), torch.zeros(70_000, dtype=dtype)]
    scores[1][66_000] = math.nan
    with pytest.raises(ValueError, match=r"scores\[1\]: contains NaN"):
        fls.select_smallest(scores, 0, backend="cpu")


@pytest.mark.parametrize("dtype", DTYPES)
def test_select_smallest_too_large_k_raises_value_error_naming_k(dtype):
    scores = [torch.tensor([1.0, INF, -INF], dtype=dtype), torch.empty(0, dtype=dtype)]
    fls.select_smallest(scores, 2, backend="cpu")
    with pytest.raises(ValueError, match=r"k: 3 exceeds the 2 scores below \+inf"):
        fls.select_smallest(scores, 3, backend="cpu")
    with pytest.raises(ValueError, match="k: 1 exceeds the 0"):
        fls.select_smallest([torch.empty(0, dtype=dtype)], 1, backend="cpu")


def test_select_smallest_native_checks_name_the_argument():
    op = torch.ops.fls._select_smallest
    scores = [torch.zeros(3), torch.zeros(2)]
    with pytest.raises(ValueError, match="outs: expected 2 tensors"):
        op(scores, 1, [torch.empty(3, dtype=torch.bool)])
    with pytest.raises(ValueError, match=r"outs\[1\]: expected shape"):
        op(scores, 1, [torch.empty(3, dtype=torch.bool), torch.empty(3, dtype=torch.bool)])
    with pytest.raises(TypeError, match=r"outs\[0\]: expected dtype bool"):
        op(scores, 1, [torch.empty(3), torch.empty(2, dtype=torch.bool)])
    with pytest.raises(TypeError, match=r"scores\[1\]: dtype"):
        op([torch.zeros(3), torch.zeros(2, dtype=torch.float64)], 1, [torch.empty(3, dtype=torch.bool)] * 2)
    with pytest.raises(TypeError, match=r"scores\[0\]: expected float32 or float64"):
        op([torch.zeros(3, dtype=torch.float16)], 1, [torch.empty(3, dtype=torch.bool)])
    with pytest.raises(ValueError, match="k: must be ≥ 0"):
        op(scores, -1, [torch.empty(3, dtype=torch.bool), torch.empty(2, dtype=torch.bool)])
    with pytest.raises(ValueError, match=r"outs\[0\]: must be contiguous"):
        op([torch.zeros(3, 4)], 1, [torch.empty(4, 3, dtype=torch.bool).T])


NM = [
    pytest.param(2, 4, id="2:4"),
    pytest.param(1, 4, id="1:4"),
    pytest.param(0, 4, id="0:4"),
    pytest.param(4, 4, id="4:4"),
    pytest.param(3, 8, id="3:8"),
    pytest.param(1, 1, id="1:1"),
    pytest.param(17, 64, id="17:64"),
]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("n,m", NM)
@pytest.mark.parametrize("rows", [1, 7, 300], ids=["1-row", "7-rows", "300-rows"])
def test_select_nm_matches_reference(rows, n, m, dtype):
    scores = _ties(rows, 3 * m).to(dtype)
    flat = scores.view(-1)
    picks = torch.randperm(flat.numel())[: max(4, flat.numel() // 10)]
    flat[picks[0::4]] = INF
    flat[picks[1::4]] = -INF
    flat[picks[2::4]] = -0.0
    flat[picks[3::4]] = math.nan  # sorted last by the reference, never selected unless n forces it
    out = fls.select_nm(scores, n, m, backend="cpu")
    assert_close(out, ref.select_nm(scores.double(), n, m), tol=0)


def test_select_nm_native_checks_name_the_argument():
    op = torch.ops.fls._select_nm
    with pytest.raises(ValueError, match="scores: 6 columns"):
        op(torch.zeros(2, 6), 2, 4, torch.empty(2, 6, dtype=torch.bool))
    with pytest.raises(ValueError, match="n, m"):
        op(torch.zeros(2, 8), 5, 4, torch.empty(2, 8, dtype=torch.bool))
    with pytest.raises(ValueError, match="out: expected shape"):
        op(torch.zeros(2, 8), 2, 4, torch.empty(2, 4, dtype=torch.bool))
    with pytest.raises(TypeError, match="out: expected dtype"):
        op(torch.zeros(2, 8), 2, 4, torch.empty(2, 8))
    with pytest.raises(ValueError, match="scores: expected a matrix"):
        op(torch.zeros(8), 2, 4, torch.empty(8, dtype=torch.bool))
