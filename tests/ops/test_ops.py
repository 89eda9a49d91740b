"""Every op of the table on every backend against the float64 reference, its arguments bound from one layer
problem (a grouped op: every awkward shape as one group), plus opcheck on each op's example problem, torch.compile
and autograd.

Backends that cannot run an op here are skipped with the registry's reason.
"""

from __future__ import annotations

import pytest
import torch

import fls_kernels as fls
import fls_reference as ref
from fls_kernels.backends import table
from fls_kernels.testing import AWKWARD_SHAPES, assert_close, bind, cast, example, random_problem, tolerance
from tests.conftest import backend_or_skip, devices

BACKENDS = ["reference", "cpu", "cuda", "triton"]
SHAPES = [pytest.param(m, n, id=i) for i, m, n in AWKWARD_SHAPES]
DTYPES = [pytest.param(torch.float32, id="fp32"), pytest.param(torch.float64, id="fp64")]


def block(m, n, dtype, device, seed=0):
    exact = random_problem(m, n, seed=seed)
    return exact, cast(exact, dtype, device)


def params():
    return [pytest.param(b, d, id=f"{b}-{d}") for b in BACKENDS for d in devices()]


LAYER_OPS = [pytest.param(op, id=op.name) for op in table.TABLE if not op.grouped]
GROUPED_OPS = [pytest.param(op, id=op.name) for op in table.TABLE if op.grouped]


def agree(op: table.Op, backend: str, exact, problem, dtype: torch.dtype) -> None:
    """``op`` on ``backend`` bound from ``problem`` equals the reference on the float64 ``exact`` problem (masks
    exactly); an in-place op returns its argument and leaves exact zeros outside ``keep``."""
    args = bind(op, problem)
    out = getattr(fls, op.name)(*args, backend=backend)
    expected = getattr(ref, op.name)(*bind(op, exact))
    outs, wants = (o if isinstance(o, list) else [o] for o in (out, expected))
    assert len(outs) == len(wants)
    tol = 0 if op.masks else tolerance(dtype)
    for i, (o, e) in enumerate(zip(outs, wants)):
        assert o.dtype == (torch.bool if op.masks else dtype), op.name
        assert_close(o.cpu(), e.to(o.dtype), tol=tol, name=f"{op.name}[{i}]")
    if op.mutates:
        firsts, keeps = (args[0], bind(op, exact)[-1]) if op.grouped else ([args[0]], [bind(op, exact)[-1]])
        assert all(o is a for o, a in zip(outs, firsts)), "an in-place op returns its argument"
        for o, keep in zip(outs, keeps):
            assert (o.cpu()[~keep] == 0).all(), "pruned weights must be exactly zero"


@pytest.mark.parametrize("backend,device", params())
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("m,n", SHAPES)
@pytest.mark.parametrize("op", LAYER_OPS)
def test_against_reference(op, backend, device, dtype, m, n):
    name = backend_or_skip(backend, op.name, device, dtype)
    exact, problem = block(m, n, dtype, device)
    agree(op, name, exact, problem, dtype)


@pytest.mark.parametrize("backend,device", params())
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("op", GROUPED_OPS)
def test_grouped_against_reference(op, backend, device, dtype):
    """Every awkward shape as one group of layers."""
    name = backend_or_skip(backend, op.name, device, dtype)
    layers = [block(m, n, dtype, device, seed=i) for i, (_, m, n) in enumerate(AWKWARD_SHAPES)]
    agree(op, name, [e for e, _ in layers], [c for _, c in layers], dtype)


@pytest.mark.parametrize("backend,device", params())
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("k", [0, 1, 100, 311])
def test_select_smallest(backend, device, dtype, k):
    name = backend_or_skip(backend, "select_smallest", device, dtype)
    scores = [torch.randint(0, 50, s, dtype=torch.float64) for s in [(13, 7), (1,), (3, 5, 11), (129,)]]
    scores[0][3, 3] = float("inf")
    expected = ref.select_smallest(scores, k)
    out = fls.select_smallest([s.to(device=device, dtype=dtype) for s in scores], k, backend=name)
    for o, e in zip(out, expected):
        assert_close(o.cpu(), e, tol=0)


# ---------------------------------------------------------------------------------------------- op machinery
@pytest.mark.parametrize("backend", ["reference", "cpu"])
@pytest.mark.parametrize("op", fls.backends.OPS)
def test_opcheck(op, backend):
    backend_or_skip(backend, op, "cpu", torch.float64)
    spec = table.get(op)
    args = (*example(spec), *("fp32",) * spec.precision, backend)
    torch.library.opcheck(getattr(torch.ops.fls, op).default, args)


def test_kron_qv_autograd_matches_finite_differences():
    e, _ = block(4, 6, torch.float64, "cpu")
    inputs = [e[k].clone().requires_grad_() for k in ("W", "A", "G_R", "G_L")]
    assert torch.autograd.gradcheck(lambda *t: fls.kron_qv(*t, backend="reference"), inputs)


@pytest.mark.parametrize(
    "shapes", [pytest.param([(4, 6), (1, 5), (7, 2)], id="three"), pytest.param([(3, 3)], id="one")]
)
def test_kron_qv_grouped_autograd_matches_finite_differences(shapes):
    layers = [block(m, n, torch.float64, "cpu", seed=i)[0] for i, (m, n) in enumerate(shapes)]
    inputs = [layer[k].clone().requires_grad_() for k in ("W", "A", "G_R", "G_L") for layer in layers]
    k = len(layers)

    def grouped(*t):
        return tuple(fls.kron_qv_grouped(*(list(t[i * k : (i + 1) * k]) for i in range(4)), backend="reference"))

    assert torch.autograd.gradcheck(grouped, inputs)


def test_kron_qv_grouped_backward_equals_per_layer_backward_with_unused_outputs():
    """A layer whose output takes no part in the loss gets zero gradients; the others get kron_qv's."""
    layers = [block(m, n, torch.float64, "cpu", seed=i)[0] for i, (m, n) in enumerate([(5, 3), (2, 7), (4, 4)])]
    keys = ("W", "A", "G_R", "G_L")
    grouped = [[layer[k].clone().requires_grad_() for layer in layers] for k in keys]
    Ys = fls.kron_qv_grouped(*grouped, backend="reference")
    (Ys[0].square().sum() + Ys[2].sin().sum()).backward()
    for i, layer in enumerate(layers):
        single = [layer[k].clone().requires_grad_() for k in keys]
        Y = fls.kron_qv(*single, backend="reference")
        loss = {0: Y.square().sum(), 1: 0 * Y.sum(), 2: Y.sin().sum()}[i]
        loss.backward()
        for j, k in enumerate(keys):
            torch.testing.assert_close(grouped[j][i].grad, single[j].grad, rtol=1e-12, atol=1e-12, msg=k)
        if i == 1:
            assert all(not grouped[j][1].grad.any() for j in range(4))


def test_kron_diag_autograd_matches_finite_differences():
    e, _ = block(4, 6, torch.float64, "cpu")
    inputs = [e[k].clone().requires_grad_() for k in ("A", "r", "l")]
    assert torch.autograd.gradcheck(lambda *t: fls.kron_diag(*t, backend="reference"), inputs)


def test_torch_compile_fullgraph_runs_every_op():
    e, c = block(6, 9, torch.float32, "cpu")

    def step(W, A, G_R, G_L, r, l, alive, prune, keep):
        q = fls.kron_qv(W, A, G_R, G_L)
        d = fls.kron_diag(A, r, l)
        s = fls.obs_scores(W, A, r, l, alive)
        chosen = fls.select_smallest([s], 5)[0]
        nm = fls.select_nm(s[:, :8], 1, 4)
        W2 = W.clone()
        fls.surgeon_update_(W2, A, G_R, G_L, r, l, prune, keep)
        return q, d, s, chosen, nm, W2

    args = [c[k] for k in ("W", "A", "G_R", "G_L", "r", "l", "alive", "prune", "keep")]
    eager = step(*args)
    torch._dynamo.reset()
    compiled = torch.compile(step, fullgraph=True, backend="aot_eager")(*args)
    for a, b in zip(compiled, eager):
        assert_close(a, b, tol=tolerance(torch.float32))


# ---------------------------------------------------------------------------------------------- validation
def test_errors_name_the_argument():
    _, c = block(4, 5, torch.float32, "cpu")
    W, A, G_R, G_L, r, l = (c[k] for k in ("W", "A", "G_R", "G_L", "r", "l"))
    with pytest.raises(ValueError, match="G_L"):
        fls.kron_qv(W, A, G_R, G_R)
    with pytest.raises(TypeError, match="A: dtype"):
        fls.kron_qv(W, A.double(), G_R, G_L)
    with pytest.raises(ValueError, match="A: on meta"):
        fls.kron_qv(W, A.to("meta"), G_R, G_L)
    with pytest.raises(ValueError, match="precision"):
        fls.kron_qv(W, A, G_R, G_L, precision="fp8")
    with pytest.raises(TypeError, match="mask"):
        fls.obs_scores(W, A, r, l, torch.ones(4, 5))
    with pytest.raises(ValueError, match="l: expected shape"):
        fls.kron_diag(A, r, l[:-1])
    with pytest.raises(ValueError, match="W: must be contiguous"):
        fls.surgeon_update_(W.T.contiguous().T, A, G_R, G_L, r, l, c["prune"], c["keep"])
    with pytest.raises(TypeError, match="k: expected an int"):
        fls.select_smallest([W], 2.0)
    with pytest.raises(TypeError, match="scores"):
        fls.select_smallest(W, 2)
    with pytest.raises(ValueError, match="divisible"):
        fls.select_nm(W, 2, 4)
    with pytest.raises(ValueError, match="n, m"):
        fls.select_nm(W, 5, 4)


def test_grouped_errors_name_the_list_and_layer():
    layers = [block(m, n, torch.float32, "cpu", seed=i)[1] for i, (m, n) in enumerate([(4, 5), (3, 2), (6, 6)])]

    def args(**change):
        lists = {k: [layer[k] for layer in layers] for k in ("W", "A", "G_R", "G_L", "r", "l", "prune", "keep")}
        lists["W"] = [W.clone() for W in lists["W"]]
        lists.update(change)
        return list(lists.values())

    with pytest.raises(ValueError, match=r"As\[1\]: expected shape \(3, 2\)"):
        fls.kron_qv_grouped(*args(A=[layers[0]["A"]] * 3)[:4])
    with pytest.raises(ValueError, match="G_Ls: expected 3 tensors"):
        fls.kron_qv_grouped(*args(G_L=[layers[0]["G_L"]])[:4])
    with pytest.raises(TypeError, match="Vs: expected a non-empty list"):
        fls.kron_qv_grouped(layers[0]["W"], *args()[1:4])
    with pytest.raises(TypeError, match=r"Vs\[2\]: dtype torch.float64 differs"):
        fls.kron_qv_grouped(*args(W=[layers[0]["W"], layers[1]["W"], layers[2]["W"].double()])[:4])
    with pytest.raises(ValueError, match="precision"):
        fls.kron_qv_grouped(*args()[:4], precision="fp8")
    with pytest.raises(ValueError, match=r"Ws\[1\]: must be contiguous"):
        Ws = args()[0]
        fls.surgeon_update_grouped_(*args(W=[Ws[0], Ws[1].T.contiguous().T, Ws[2]]))
    with pytest.raises(ValueError, match=r"Ws\[1\]: the same tensor as Ws\[0\]"):
        W = layers[0]["W"].clone()
        fls.surgeon_update_grouped_(
            [W, W], *([layers[0][k]] * 2 for k in ("A", "G_R", "G_L", "r", "l", "prune", "keep"))
        )
    with pytest.raises(TypeError, match=r"keeps\[0\]: expected a bool mask"):
        fls.surgeon_update_grouped_(*args(keep=[layers[0]["W"], layers[1]["keep"], layers[2]["keep"]]))
    with pytest.raises(ValueError, match=r"rs\[2\]: expected shape \(6,\)"):
        fls.surgeon_update_grouped_(*args(r=[layers[0]["r"], layers[1]["r"], layers[0]["r"]]))
    with pytest.raises(ValueError, match=r"prunes\[1\]: on meta"):
        fls.surgeon_update_grouped_(
            *args(prune=[layers[0]["prune"], layers[1]["prune"].to("meta"), layers[2]["prune"]])
        )


def test_grouped_reference_is_the_per_layer_reference():
    layers = [block(m, n, torch.float64, "cpu", seed=i)[1] for i, (m, n) in enumerate([(4, 5), (1, 7), (6, 1)])]
    keys = ("A", "G_R", "G_L", "r", "l", "prune", "keep")
    Ys = fls.kron_qv_grouped(*([c[k] for c in layers] for k in ("W", "A", "G_R", "G_L")), backend="reference")
    Ws = fls.surgeon_update_grouped_(
        [c["W"].clone() for c in layers], *([c[k] for c in layers] for k in keys), backend="reference"
    )
    for Y, W, c in zip(Ys, Ws, layers):
        assert torch.equal(Y, ref.kron_qv(c["W"], c["A"], c["G_R"], c["G_L"]))
        assert torch.equal(W, ref.surgeon_update_(c["W"].clone(), *(c[k] for k in keys)))


def test_backend_selection_order(monkeypatch):
    from fls_kernels import backends

    device, dtype = torch.device("cpu"), torch.float64
    assert backends.select("select_smallest", device, dtype, "reference") == "reference"
    with pytest.raises(ValueError, match="unknown backend"):
        backends.select("kron_qv", device, dtype, "nope")
    with pytest.raises(backends.BackendUnavailableError, match="cuda"):
        backends.select("kron_qv", device, dtype, "cuda")
    monkeypatch.setenv("FLS_BACKEND", "reference")
    assert backends.select("kron_qv", device, dtype) == "reference"
    monkeypatch.delenv("FLS_BACKEND")
    with fls.use_backend("reference"):
        assert backends.select("kron_qv", device, dtype) == "reference"
        assert backends.select("kron_qv", device, dtype, "reference") == "reference"
    auto = backends.select("kron_qv", device, torch.float32)
    expected = "cpu" if backends.get_backend("cpu").reason("kron_qv", device, torch.float32) is None else "reference"
    assert auto == expected
    # Triton runs on the CPU only when asked for explicitly.
    assert backends.select("kron_qv", device, torch.float32) != "triton"


def test_unavailable_backend_error_lists_reason_and_fix():
    from fls_kernels import backends

    with pytest.raises(backends.BackendUnavailableError, match="Fix:"):
        fls.kron_diag(torch.ones(2, 2), torch.ones(2), torch.ones(2), backend="cuda")
