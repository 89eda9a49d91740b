"""The Triton kernels beyond the shared op tests: GEMM precisions, half-precision tensors, grouped launches,
poisoned outputs, opcheck, torch.compile, autograd and fitting on the Triton backend, and large GPU layers.

Without CUDA every kernel runs through Triton's interpreter on the CPU (tests/conftest.py sets
TRITON_INTERPRET=1), so shapes stay small; the large layers are GPU-only.

Reduced precisions follow the rule "error at most the tolerance table's, or 2× the error of plain PyTorch in the
same precision where that is larger": the baseline is the same two GEMMs in float64 on operands cut the way a
tensor core reads them (bf16: round to nearest even, as ``Tensor.to(torch.bfloat16)``; tf32: the top 19 bits,
as Hopper tensor cores read an fp32 operand: Triton issues no rounding before wgmma).
"""

from __future__ import annotations

import pytest
import torch

import fls_kernels as fls
import fls_reference as ref
from fls_kernels.testing import (
    AWKWARD_SHAPES,
    TOLERANCES,
    assert_close,
    cast,
    poison_enabled,
    random_problem,
    rel_error,
    tolerance,
)
from tests.conftest import backend_or_skip

pytestmark = pytest.mark.triton

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
LOW = ["tf32", "bf16"]
_BY_ID = {i: (m, n) for i, m, n in AWKWARD_SHAPES}
SHAPES = [pytest.param(*_BY_ID[i], id=i) for i in ("1-row", "primes", "block+1", "tall", "wide")]
#: Lists of layers for the grouped ops: the awkward shapes together, and an aligned list (every size a
#: multiple of 16, so the kernels take their aligned path) with a repeated shape and an empty layer.
GROUPS = [
    pytest.param([_BY_ID[i] for i in ("1-row", "primes", "block+1", "tall", "wide")], id="awkward"),
    pytest.param([(16, 32), (48, 16), (16, 32), (0, 16), (32, 64)], id="aligned"),
]
KEYS = ("A", "G_R", "G_L", "r", "l", "prune", "keep")


def triton(op: str, dtype: torch.dtype = torch.float32) -> str:
    return backend_or_skip("triton", op, DEVICE, dtype)


def problem(m: int, n: int, dtype: torch.dtype = torch.float32, seed: int = 0):
    """(exact, cast): the float64 problem whose floats are the ``dtype`` values, and those values on DEVICE."""
    exact = cast(cast(random_problem(m, n, seed=seed), dtype, "cpu"), torch.float64, "cpu")
    return exact, cast(exact, dtype, DEVICE)


def operand(x: torch.Tensor, precision: str) -> torch.Tensor:
    """``x`` as a tensor-core GEMM in ``precision`` reads it, in float64."""
    if precision == "bf16":
        return x.to(torch.bfloat16).double()
    if precision == "tf32":
        bits = x.float().view(torch.int32) & ~((1 << 13) - 1)
        return bits.view(torch.float32).double()
    return x.double()


def baseline_qv(V, A, G_R, G_L, precision: str) -> torch.Tensor:
    """A ⊙ (G_R (A ⊙ V) G_L) by two float64 GEMMs on operands in ``precision`` (the fp32 T rounded again)."""
    T = operand(A * V, precision) @ operand(G_L, precision)
    return A * (operand(G_R, precision) @ operand(T.float(), precision))


def low_tolerance(precision: str, baseline_error: float) -> float:
    return max(TOLERANCES[precision], 2 * baseline_error)


def assert_surgeon_close(W: torch.Tensor, e: dict, precision: str, name: str = "surgeon_update_") -> None:
    """Pruned weights exactly +0, and the update of the kept weights within the precision's tolerance.

    The GEMMs only move the kept weights, so their update — not W, which also holds the untouched values —
    is compared: relative to the float64 update, and for tf32/bf16 against the rounded-operand baseline.
    """
    W, keep = W.detach().cpu().double(), e["keep"].cpu()
    assert (W[~keep] == 0).all() and not torch.signbit(W[~keep]).any(), f"{name}: pruned weights must be +0"
    want = ref.surgeon_update_(e["W"].clone(), *(e[k] for k in KEYS)).cpu() - e["W"].cpu()
    tol = TOLERANCES[precision]
    if precision != "fp32":
        Z = torch.where(e["prune"], e["W"] / ref.kron_diag(e["A"], e["r"], e["l"]), torch.zeros_like(e["W"]))
        base = -baseline_qv(Z, e["A"], e["G_R"], e["G_L"], precision).cpu()
        tol = low_tolerance(precision, rel_error(base[keep], want[keep]))
    error = rel_error((W - e["W"].cpu())[keep], want[keep])
    assert error <= tol, f"{name} {precision}: relative error of the update {error:.2e} > {tol:.1e}"


def each(layers: list[dict], key: str) -> list[torch.Tensor]:
    return [layer[key] for layer in layers]


# ---------------------------------------------------------------------------------------------- precisions
@pytest.mark.parametrize("precision", LOW)
@pytest.mark.parametrize("m,n", SHAPES)
def test_kron_qv_low_precision_against_float64(m, n, precision):
    triton("kron_qv")
    e, c = problem(m, n)
    out = fls.kron_qv(c["W"], c["A"], c["G_R"], c["G_L"], precision=precision, backend="triton")
    expected = ref.kron_qv(e["W"], e["A"], e["G_R"], e["G_L"])
    base = rel_error(baseline_qv(e["W"], e["A"], e["G_R"], e["G_L"], precision), expected)
    assert_close(out.cpu().double(), expected, tol=low_tolerance(precision, base), name=f"kron_qv {precision}")


@pytest.mark.parametrize("precision", LOW)
@pytest.mark.parametrize("m,n", SHAPES)
def test_surgeon_update_low_precision_against_float64(m, n, precision):
    triton("surgeon_update_")
    e, c = problem(m, n)
    W = c["W"].clone()
    fls.surgeon_update_(W, *(c[k] for k in KEYS), precision=precision, backend="triton")
    assert_surgeon_close(W, e, precision)


def test_reduced_precisions_are_really_used():
    """fp32 < tf32 < bf16 in error: a mode silently computed in fp32 (or rounded twice) shows here."""
    triton("kron_qv")
    e, c = problem(64, 48)
    expected = ref.kron_qv(e["W"], e["A"], e["G_R"], e["G_L"])
    errors = {
        p: rel_error(fls.kron_qv(c["W"], c["A"], c["G_R"], c["G_L"], precision=p, backend="triton").cpu(), expected)
        for p in ("fp32", "tf32", "bf16")
    }
    assert errors["fp32"] < 1e-6 < errors["tf32"] < errors["bf16"], errors


@pytest.mark.parametrize("dtype", [pytest.param(torch.bfloat16, id="bf16"), pytest.param(torch.float16, id="fp16")])
def test_half_precision_tensors(dtype):
    """bf16/fp16 inputs: loaded, computed in fp32, stored in their dtype (one rounding of the result)."""
    for op in ("kron_qv", "kron_diag", "obs_scores", "surgeon_update_"):
        triton(op, dtype)
    e, c = problem(17, 33, dtype)
    tol = tolerance(dtype)
    out = fls.kron_qv(c["W"], c["A"], c["G_R"], c["G_L"], backend="triton")
    assert out.dtype == dtype
    assert_close(out.cpu().double(), ref.kron_qv(e["W"], e["A"], e["G_R"], e["G_L"]), tol=tol, name="kron_qv")
    out = fls.kron_diag(c["A"], c["r"], c["l"], backend="triton")
    assert_close(out.cpu().double(), ref.kron_diag(e["A"], e["r"], e["l"]), tol=tol, name="kron_diag")
    out = fls.obs_scores(c["W"], c["A"], c["r"], c["l"], c["alive"], backend="triton")
    expected = ref.obs_scores(e["W"], e["A"], e["r"], e["l"], e["alive"])
    assert_close(out.cpu().double(), expected, tol=tol, name="obs_scores")
    W = c["W"].clone()
    fls.surgeon_update_(W, *(c[k] for k in KEYS), backend="triton")
    expected = ref.surgeon_update_(e["W"].clone(), *(e[k] for k in KEYS))
    assert_close(W.cpu().double(), expected, tol=tol, name="surgeon_update_")
    assert (W.cpu()[~e["keep"]] == 0).all()


def test_strided_inputs():
    """Transposed and diagonal-view operands are read through their strides (no copies are needed)."""
    triton("surgeon_update_")
    e, c = problem(19, 23)
    At = c["A"].T.contiguous().T  # column-major
    G_R = c["G_R"].T.contiguous().T
    r, l = c["G_R"].diagonal(), c["G_L"].diagonal()  # strided views
    out = fls.kron_qv(c["W"].T.contiguous().T, At, G_R, c["G_L"], backend="triton")
    assert_close(out.cpu().double(), ref.kron_qv(e["W"], e["A"], e["G_R"], e["G_L"]), tol=TOLERANCES["fp32"])
    W = c["W"].clone()
    fls.surgeon_update_(W, At, G_R, c["G_L"], r, l, c["prune"].T.contiguous().T, c["keep"], backend="triton")
    expected = ref.surgeon_update_(e["W"].clone(), *(e[k] for k in KEYS))
    assert_close(W.cpu().double(), expected, tol=TOLERANCES["fp32"])


# ---------------------------------------------------------------------------------------------- grouped ops
@pytest.mark.parametrize("precision", ["fp32", "tf32"])
@pytest.mark.parametrize("shapes", GROUPS)
def test_kron_qv_grouped_matches_reference(shapes, precision):
    triton("kron_qv_grouped")
    layers = [problem(m, n, seed=i) for i, (m, n) in enumerate(shapes)]
    exact, device = [e for e, _ in layers], [c for _, c in layers]
    outs = fls.kron_qv_grouped(
        *(each(device, k) for k in ("W", "A", "G_R", "G_L")), precision=precision, backend="triton"
    )
    expected = ref.kron_qv_grouped(*(each(exact, k) for k in ("W", "A", "G_R", "G_L")))
    for g, (out, want, e) in enumerate(zip(outs, expected, exact)):
        tol = TOLERANCES["fp32"]
        if precision != "fp32":
            tol = low_tolerance(precision, rel_error(baseline_qv(e["W"], e["A"], e["G_R"], e["G_L"], precision), want))
        assert_close(out.cpu().double(), want, tol=tol, name=f"layer {g} {tuple(want.shape)}")


@pytest.mark.parametrize("precision", ["fp32", "tf32"])
@pytest.mark.parametrize("shapes", GROUPS)
def test_surgeon_update_grouped_matches_reference(shapes, precision):
    triton("surgeon_update_grouped_")
    layers = [problem(m, n, seed=i) for i, (m, n) in enumerate(shapes)]
    exact, device = [e for e, _ in layers], [c for _, c in layers]
    Ws = [W.clone() for W in each(device, "W")]
    out = fls.surgeon_update_grouped_(Ws, *(each(device, k) for k in KEYS), precision=precision, backend="triton")
    assert all(o is W for o, W in zip(out, Ws))
    for g, (W, e) in enumerate(zip(Ws, exact)):
        assert_surgeon_close(W, e, precision, name=f"layer {g} {tuple(W.shape)}")


def test_grouped_equals_one_layer_at_a_time():
    """The grouped launch and per-layer launches agree (bitwise under the interpreter's single config)."""
    triton("surgeon_update_grouped_")
    layers = [problem(m, n, seed=i)[1] for i, (m, n) in enumerate([(5, 40), (33, 17), (16, 16)])]
    Ws = [W.clone() for W in each(layers, "W")]
    fls.surgeon_update_grouped_(Ws, *(each(layers, k) for k in KEYS), backend="triton")
    for W, c in zip(Ws, layers):
        single = c["W"].clone()
        fls.surgeon_update_(single, *(c[k] for k in KEYS), backend="triton")
        assert_close(W, single, tol=0 if DEVICE == "cpu" else TOLERANCES["fp32"])


# ---------------------------------------------------------------------------------------------- poisoned outputs
def test_every_output_entry_is_written():
    """Poisoned outputs (and GEMM temporaries) start as NaN/True: partial tiles must overwrite all of them."""
    assert poison_enabled(), "tests/conftest.py installs the poisoning allocator (FLS_POISON=1)"
    for op in ("kron_qv", "kron_diag", "obs_scores", "select_nm", "surgeon_update_"):
        triton(op)
    _, c = problem(33, 65)
    c["alive"][0, 0] = False
    for out in (
        fls.kron_qv(c["W"], c["A"], c["G_R"], c["G_L"], backend="triton"),
        fls.kron_diag(c["A"], c["r"], c["l"], backend="triton"),
        fls.obs_scores(c["W"], c["A"], c["r"], c["l"], c["alive"], backend="triton"),
        fls.surgeon_update_(c["W"].clone(), *(c[k] for k in KEYS), backend="triton"),
    ):
        assert not torch.isnan(out).any()
    chosen = fls.select_nm(c["W"][:, :64], 2, 4, backend="triton")
    assert (chosen.reshape(33, 16, 4).sum(-1) == 2).all()


def test_select_nm_ties_nan_and_group_sizes():
    triton("select_nm")
    scores = torch.tensor(
        [[1.0, 1.0, 1.0, 1.0, float("nan"), 0.0, float("nan"), 5.0, float("inf"), -0.0, 0.0, -1.0]], device=DEVICE
    )
    for n, m in [(2, 4), (1, 4), (0, 4), (4, 4), (1, 3), (2, 6), (5, 12)]:
        out = fls.select_nm(scores, n, m, backend="triton")
        assert_close(out.cpu(), ref.select_nm(scores.cpu(), n, m), tol=0, name=f"{n}:{m}")


# ---------------------------------------------------------------------------------------------- op machinery
def grouped_cases():
    layers = [problem(m, n, seed=i)[1] for i, (m, n) in enumerate([(5, 7), (3, 4)])]
    return {
        "kron_qv_grouped": (
            torch.ops.fls.kron_qv_grouped.default,
            (*(each(layers, k) for k in ("W", "A", "G_R", "G_L")), "fp32", "triton"),
        ),
        "surgeon_update_grouped_": (
            torch.ops.fls.surgeon_update_grouped_.default,
            ([W.clone() for W in each(layers, "W")], *(each(layers, k) for k in KEYS), "fp32", "triton"),
        ),
    }


def single_cases():
    _, c = problem(5, 7)
    return {
        "kron_qv": (torch.ops.fls.kron_qv.default, (c["W"], c["A"], c["G_R"], c["G_L"], "tf32", "triton")),
        "kron_diag": (torch.ops.fls.kron_diag.default, (c["A"], c["r"], c["l"], "triton")),
        "obs_scores": (torch.ops.fls.obs_scores.default, (c["W"], c["A"], c["r"], c["l"], c["alive"], "triton")),
        "select_nm": (torch.ops.fls.select_nm.default, (c["W"][:, :4].contiguous(), 2, 4, "triton")),
        "surgeon_update_": (
            torch.ops.fls.surgeon_update_.default,
            (c["W"].clone(), *(c[k] for k in KEYS), "fp32", "triton"),
        ),
    }


@pytest.mark.parametrize("op", ["kron_qv_grouped", "surgeon_update_grouped_"])
def test_opcheck_grouped(op):
    triton(op)
    overload, args = grouped_cases()[op]
    torch.library.opcheck(overload, args)


@pytest.mark.parametrize("op", ["kron_qv", "kron_diag", "obs_scores", "select_nm", "surgeon_update_"])
def test_opcheck_single(op):
    triton(op)
    overload, args = single_cases()[op]
    torch.library.opcheck(overload, args)


def test_torch_compile_fullgraph_runs_grouped_ops():
    triton("kron_qv_grouped")
    triton("surgeon_update_grouped_")
    layers = [problem(m, n, seed=i)[1] for i, (m, n) in enumerate([(6, 9), (17, 4), (1, 12)])]

    def step(Ws, As, G_Rs, G_Ls, rs, ls, prunes, keeps):
        Ys = fls.kron_qv_grouped(Ws, As, G_Rs, G_Ls, precision="tf32", backend="triton")
        updated = [W.clone() for W in Ws]
        fls.surgeon_update_grouped_(updated, As, G_Rs, G_Ls, rs, ls, prunes, keeps, backend="triton")
        return [*Ys, *updated]

    args = [each(layers, k) for k in ("W", *KEYS)]
    eager = step(*args)
    torch._dynamo.reset()
    compiled = torch.compile(step, fullgraph=True, backend="aot_eager")(*args)
    for a, b in zip(compiled, eager):
        assert_close(a, b, tol=0 if DEVICE == "cpu" else TOLERANCES["fp32"])


# ---------------------------------------------------------------------------------------------- autograd, fitting
def test_kron_qv_gradients_match_the_reference():
    """The backward (built from kron_qv itself) on Triton kernels against the float64 reference's."""
    triton("kron_qv")
    e, c = problem(9, 13)
    probe = torch.randn(9, 13, dtype=torch.float64)
    grads = {}
    for name, inputs in (("triton", c), ("reference", e)):
        leaves = [inputs[k].clone().requires_grad_() for k in ("W", "A", "G_R", "G_L")]
        out = fls.kron_qv(*leaves, backend=name)
        (out * probe.to(out)).sum().backward()
        grads[name] = [leaf.grad.cpu().double() for leaf in leaves]
    for k, got, want in zip(("V", "A", "G_R", "G_L"), grads["triton"], grads["reference"]):
        assert_close(got, want, tol=1e-5, name=f"d{k}")


@pytest.mark.filterwarnings("ignore:Input #:UserWarning")  # gradcheck on fp32 inputs, on purpose
def test_kron_qv_gradcheck_in_float32():
    triton("kron_qv")
    _, c = problem(3, 5)
    inputs = [c[k].clone().requires_grad_() for k in ("W", "A", "G_R", "G_L")]
    # Q(V) is at most quadratic in every input, so central differences are exact up to fp32 rounding.
    assert torch.autograd.gradcheck(
        lambda *t: fls.kron_qv(*t, backend="triton"), inputs, eps=1e-2, atol=1e-3, rtol=1e-3
    )


def test_fit_on_the_triton_backend_matches_the_reference():
    """The aux-loss fitter's Q products (forward, preconditioning and backward) all run on Triton."""
    triton("kron_qv")
    from tests.pruning.helpers import SmallNet, loader

    losses = {}
    for name in ("reference", "triton"):
        torch.manual_seed(0)
        pruner = fls.FishLegPruner(SmallNet().to(DEVICE), "categorical", init_batches=2, seed=0)
        data = [tuple(t.to(DEVICE) for t in batch) for batch in loader()]
        with fls.use_backend(name):
            losses[name] = torch.tensor(pruner.fit(data, steps=4))
    torch.testing.assert_close(losses["triton"], losses["reference"], rtol=1e-4, atol=1e-6)


# ---------------------------------------------------------------------------------------------- large layers (GPU)
def device_problem(m: int, n: int, seed: int = 0) -> dict[str, torch.Tensor]:
    """``random_problem`` generated on the GPU (the CPU would take minutes at LLM sizes), in float32."""
    return cast(random_problem(m, n, seed=seed, prune_fraction=0.1, device="cuda"), torch.float32, "cuda")


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device (large layers)")
@pytest.mark.parametrize("precision", ["fp32", "tf32", "bf16"])
@pytest.mark.parametrize("m,n", [pytest.param(4096, 4096, id="4096x4096"), pytest.param(11008, 4096, id="11008x4096")])
def test_large_layers(m, n, precision):
    """Real tile configs, autotuning (the in-place pass is replayed on restored weights) and 64-bit offsets."""
    triton("surgeon_update_")
    c = device_problem(m, n)
    e = cast(c, torch.float64, "cuda")
    scores = fls.obs_scores(c["W"], c["A"], c["r"], c["l"], c["alive"], backend="triton")
    assert_close(scores, ref.obs_scores(e["W"], e["A"], e["r"], e["l"], e["alive"]).float(), tol=TOLERANCES["fp32"])
    out = fls.kron_qv(c["W"], c["A"], c["G_R"], c["G_L"], precision=precision, backend="triton")
    expected = ref.kron_qv(e["W"], e["A"], e["G_R"], e["G_L"])
    tol = TOLERANCES["fp32"]
    if precision != "fp32":
        tol = low_tolerance(precision, rel_error(baseline_qv(e["W"], e["A"], e["G_R"], e["G_L"], precision), expected))
    assert_close(out.double(), expected, tol=tol, name="kron_qv")
    del out, expected
    W = c["W"].clone()
    fls.surgeon_update_(W, *(c[k] for k in KEYS), precision=precision, backend="triton")
    assert_surgeon_close(W, e, precision)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device (a BERT-base prune step)")
@pytest.mark.parametrize("precision", ["tf32", "bf16"])
def test_bert_base_grouped_step(precision):
    """The 72 layers of BERT-base (per block: 4 × 768×768, 3072×768, 768×3072) in one grouped update."""
    triton("surgeon_update_grouped_")
    shapes = [(768, 768)] * 4 + [(3072, 768), (768, 3072)]
    layers = [device_problem(m, n, seed=i) for i, (m, n) in enumerate(shapes * 12)]
    Ws = [layer["W"].clone() for layer in layers]
    fls.surgeon_update_grouped_(Ws, *(each(layers, k) for k in KEYS), precision=precision, backend="triton")
    for g, (W, c) in enumerate(zip(Ws, layers)):
        assert_surgeon_close(W, cast(c, torch.float64, "cuda"), precision, name=f"layer {g} {tuple(W.shape)}")
