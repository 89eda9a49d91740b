"""The op contracts, each declared once as a ``torch.library`` custom op ``fls::<op>`` from the op table.

A public function here checks its arguments against the table's (errors name the argument), picks a backend
(:mod:`fls_kernels.backends`) and calls the custom op, whose body runs that backend's launcher. The custom
ops' schemas and fake (meta) kernels come from the table; ``kron_qv``, ``kron_diag`` and ``kron_qv_grouped``
carry autograd formulas built from the ops themselves (the grouped backward's Q-shaped products in grouped
launches too), so they work under ``torch.compile(fullgraph=True)`` and ``torch.func``.

A layer is a matrix W: [m, n] (bias folded in as the last column) with its block of
Q = D_A (G_R ⊗ G_L) D_A: A: [m, n], G_R = RᵀR: [m, m], G_L = LLᵀ: [n, n], r = diag G_R, l = diag G_L.
The ``*_grouped`` ops take one list per argument, a layer per entry, so a model's many small layers share
one launch; their errors name the list and the layer (``Ws[3]: ...``).
"""

from __future__ import annotations

import functools
from collections.abc import Sequence

import torch
from torch import Tensor

from fls_kernels import backends
from fls_kernels.backends import kernel, table
from fls_kernels.backends.table import PRECISIONS, Arg, Output

_FLOATS = (torch.float64, torch.float32, torch.bfloat16, torch.float16)


# ----------------------------------------------------------------------------------------------- checks
def _tensor(name: str, t: object) -> Tensor:
    if not isinstance(t, Tensor):
        raise TypeError(f"{name}: expected a torch.Tensor, got {type(t).__name__}")
    return t


def _float(name: str, t: object, shape: tuple[int, ...], like: Tensor | None = None) -> Tensor:
    t = _tensor(name, t)
    if t.dtype not in _FLOATS:
        raise TypeError(f"{name}: expected a floating dtype, got {t.dtype}")
    if like is not None and t.dtype != like.dtype:
        raise TypeError(f"{name}: dtype {t.dtype} differs from {like.dtype} of the first argument")
    if tuple(t.shape) != tuple(shape):
        raise ValueError(f"{name}: expected shape {tuple(shape)}, got {tuple(t.shape)}")
    return t


def _bool(name: str, t: object, shape: tuple[int, ...]) -> Tensor:
    t = _tensor(name, t)
    if t.dtype != torch.bool:
        raise TypeError(f"{name}: expected a bool mask, got {t.dtype}")
    if tuple(t.shape) != tuple(shape):
        raise ValueError(f"{name}: expected shape {tuple(shape)}, got {tuple(t.shape)}")
    return t


def _matrix(name: str, t: object) -> Tensor:
    t = _tensor(name, t)
    if t.dim() != 2:
        raise ValueError(f"{name}: expected a matrix [m, n], got shape {tuple(t.shape)}")
    return _float(name, t, tuple(t.shape))


def _int(name: str, value: object, minimum: int | None) -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name}: expected an int, got {type(value).__name__}")
    if minimum is not None and value < minimum:
        raise ValueError(f"{name}: must be ≥ {minimum}, got {value}")


def _list(name: str, seq: object, what: str, count: int | None = None) -> list:
    if isinstance(seq, Tensor) or not isinstance(seq, Sequence) or len(seq) == 0:
        raise TypeError(f"{name}: expected a non-empty list of tensors{what}")
    if count is not None and len(seq) != count:
        raise ValueError(f"{name}: expected {count} tensors (one per layer), got {len(seq)}")
    return list(seq)


def _same_device(**tensors: Tensor) -> torch.device:
    items = list(tensors.items())
    first_name, first = items[0]
    for name, t in items[1:]:
        if t.device != first.device:
            raise ValueError(f"{name}: on {t.device} but {first_name} is on {first.device}")
    return first.device


def _precision(precision: object) -> str:
    if precision not in PRECISIONS:
        raise ValueError(f"precision: expected one of {PRECISIONS}, got {precision!r}")
    return precision  # type: ignore[return-value]


_SHAPES = {"mn": lambda m, n: (m, n), "mm": lambda m, n: (m, m), "nn": lambda m, n: (n, n)}
_SHAPES.update(m=lambda m, n: (m,), n=lambda m, n: (n,))


def _layer(args: tuple[Arg, ...], values: Sequence, names: list[str], first: Tensor | None = None) -> dict:
    """Check one layer's ``values`` against ``args`` (called ``names``); ``first``: the tensor whose dtype the first
    argument must have (a grouped op's first layer). The tensors by name."""
    tensors, like, m, n = {}, None, 0, 0
    for arg, name, value in zip(args, names, values):
        if arg.kind == "matrix":
            like = _matrix(name, value)
            if first is not None and like.dtype != first.dtype:
                head = name.rsplit("[", 1)[0]
                raise TypeError(f"{name}: dtype {like.dtype} differs from {first.dtype} of {head}[0]")
            (m, n), tensors[name] = like.shape, like
        elif arg.kind == "scores":
            scores = _list(name, value, "")
            like = _tensor(f"{name}[0]", scores[0])
            for i, s in enumerate(scores):
                s = _tensor(f"{name}[{i}]", s)
                tensors[f"{name}[{i}]"] = _float(f"{name}[{i}]", s, tuple(s.shape), like)
        elif not arg.tensor:
            _int(name, value, 0 if arg.kind == "count" else None)
        elif arg.kind == "mask":
            tensors[name] = _bool(name, value, (m, n))
        else:
            tensors[name] = _float(name, value, _SHAPES[arg.kind](m, n), like)
    return tensors


def _check(op: table.Op, values: tuple) -> tuple[torch.device, torch.dtype]:
    """Check ``values`` against ``op``'s arguments (errors name the argument; a grouped op's the list and the layer,
    ``As[3]: ...``); the device and dtype of the first tensor."""
    if not op.grouped:
        tensors = _layer(op.args, values, [a.name for a in op.args])
        if op.mutates and not values[0].is_contiguous():
            raise ValueError(f"{op.args[0].name}: must be contiguous to be updated in place")
        _RULES.get(op.name, lambda *v: None)(*values)
        first = next(iter(tensors.values()))
        return _same_device(**tensors), first.dtype
    lists = [_list(op.args[0].name, values[0], ", one per layer")]
    lists += [_list(a.name, v, ", one per layer", len(lists[0])) for a, v in zip(op.args[1:], values[1:])]
    tensors = {}
    for i, layer in enumerate(zip(*lists)):
        names = [f"{a.name}[{i}]" for a in op.args]
        tensors.update(_layer(op.args, layer, names, lists[0][0] if i else None))
        if op.mutates:
            W = layer[0]
            if not W.is_contiguous():
                raise ValueError(f"{names[0]}: must be contiguous to be updated in place")
            for j in range(i):
                if lists[0][j] is W:
                    raise ValueError(
                        f"{names[0]}: the same tensor as {op.args[0].name}[{j}]; each layer must be updated once"
                    )
    by_argument = [f"{a.name}[{i}]" for a in op.args for i in range(len(lists[0]))]  # Ws[0], Ws[1], …, As[0], …
    return _same_device(**{name: tensors[name] for name in by_argument}), lists[0][0].dtype


def _nm_rule(scores: Tensor, n: int, m: int) -> None:
    if m < 1 or not 0 <= n <= m:
        raise ValueError(f"n, m: need 0 ≤ n ≤ m and m ≥ 1, got n={n}, m={m}")
    if scores.shape[1] % m:
        raise ValueError(f"scores: {scores.shape[1]} columns are not divisible into groups of m={m}")


#: Rules of an op beyond its arguments' kinds, checked after them.
_RULES = {"select_nm": _nm_rule}


def _call(name: str, values: tuple, backend: str | None, precision: str | None = None):
    """Check, pick a backend, run the custom op ``fls::<name>``; an in-place op returns its first argument."""
    op = table.get(name)
    device, dtype = _check(op, values)
    extra = (_precision(precision),) if op.precision else ()
    chosen = backends.select(name, device, dtype, backend)
    values = tuple(list(v) if isinstance(v, Sequence) and not isinstance(v, Tensor) else v for v in values)
    out = _CUSTOM[name](*values, *extra, chosen)
    return values[0] if op.mutates else out


# ----------------------------------------------------------------------------------------------- custom ops
def _run(op: table.Op, *args):
    *values, backend = args
    options = {}
    if op.precision:
        *values, options["precision"] = values
    out = kernel(backend, op.name)(*values, **options)
    return None if op.mutates else out


def _fake(op: table.Op, *args):
    first = args[0]
    if op.mutates:
        return None
    if op.output is Output.MASKS_LIKE_EACH:
        return [torch.empty_like(t, dtype=torch.bool) for t in first]
    if op.output is Output.MASK_LIKE_FIRST:
        return torch.empty_like(first, dtype=torch.bool)
    return [t.new_empty(t.shape) for t in first] if op.grouped else torch.empty_like(first)


def _define(op: table.Op) -> torch.library.CustomOpDef:
    """``fls::<name>`` with the table's schema; its body runs the chosen backend's kernel."""
    mutates = (op.args[0].name,) if op.mutates else ()
    custom = torch.library.custom_op(
        f"fls::{op.name}", functools.partial(_run, op), mutates_args=mutates, schema=op.schema
    )
    custom.register_fake(functools.partial(_fake, op))
    return custom


_CUSTOM = {op.name: _define(op) for op in table.TABLE}


# ----------------------------------------------------------------------------------------------- autograd
def _kron_qv_setup(ctx, inputs, output):
    V, A, G_R, G_L, precision, backend = inputs
    ctx.save_for_backward(V, A, G_R, G_L)
    ctx.precision, ctx.backend = precision, backend


def _kron_qv_backward(ctx, grad):
    # Y = A ⊙ P, P = G_R U G_L, U = A ⊙ V.  With gP = A ⊙ dY and gU = G_Rᵀ gP G_Lᵀ (the same op):
    # dV = A ⊙ gU, dA = dY ⊙ P + V ⊙ gU, dG_R = gP (U G_L)ᵀ, dG_L = (G_R U)ᵀ gP.
    V, A, G_R, G_L = ctx.saved_tensors
    need_v, need_a, need_r, need_l = ctx.needs_input_grad[:4]
    op = torch.ops.fls.kron_qv
    U, gP = A * V, A * grad
    dV = dA = dG_R = dG_L = None
    if need_v or need_a:
        ones = torch.ones_like(A)
        gU = op(gP, ones, G_R.mT.contiguous(), G_L.mT.contiguous(), ctx.precision, ctx.backend)
        dV = A * gU if need_v else None
        if need_a:
            dA = grad * op(U, ones, G_R, G_L, ctx.precision, ctx.backend) + V * gU
    if need_r:
        dG_R = gP @ (U @ G_L).mT
    if need_l:
        dG_L = (G_R @ U).mT @ gP
    return dV, dA, dG_R, dG_L, None, None


def _kron_diag_setup(ctx, inputs, output):
    A, r, l, _ = inputs
    ctx.save_for_backward(A, r, l)


def _kron_diag_backward(ctx, grad):
    # Y = A² ⊙ r lᵀ:  dA = 2 A ⊙ r lᵀ ⊙ dY,  dr = (A² ⊙ dY) l,  dl = (A² ⊙ dY)ᵀ r.
    A, r, l = ctx.saved_tensors
    weighted = A * A * grad
    dA = 2 * A * torch.outer(r, l) * grad if ctx.needs_input_grad[0] else None
    dr = weighted @ l if ctx.needs_input_grad[1] else None
    dl = weighted.mT @ r if ctx.needs_input_grad[2] else None
    return dA, dr, dl, None


def _kron_qv_grouped_setup(ctx, inputs, output):
    Vs, As, G_Rs, G_Ls, precision, backend = inputs
    ctx.count = len(Vs)
    ctx.save_for_backward(*Vs, *As, *G_Rs, *G_Ls)
    ctx.precision, ctx.backend = precision, backend


def _kron_qv_grouped_backward(ctx, grads):
    # kron_qv's backward per layer, its Q-shaped products in two grouped launches (see _kron_qv_backward);
    # a layer whose output got no gradient contributes zeros.
    k = ctx.count
    saved = ctx.saved_tensors
    Vs, As, G_Rs, G_Ls = saved[:k], saved[k : 2 * k], saved[2 * k : 3 * k], saved[3 * k :]
    need_v, need_a, need_r, need_l = ctx.needs_input_grad[:4]
    op = torch.ops.fls.kron_qv_grouped
    grads = [g if g is not None else torch.zeros_like(V) for g, V in zip(grads, Vs)]
    Us = [A * V for A, V in zip(As, Vs)]
    gPs = [A * g for A, g in zip(As, grads)]
    dVs = dAs = dG_Rs = dG_Ls = None
    if need_v or need_a:
        ones = [torch.ones_like(A) for A in As]
        transposed = ([G.mT.contiguous() for G in G_Rs], [G.mT.contiguous() for G in G_Ls])
        gUs = op(gPs, ones, *transposed, ctx.precision, ctx.backend)
        if need_v:
            dVs = [A * gU for A, gU in zip(As, gUs)]
        if need_a:
            Ps = op(Us, ones, list(G_Rs), list(G_Ls), ctx.precision, ctx.backend)
            dAs = [g * P + V * gU for g, P, V, gU in zip(grads, Ps, Vs, gUs)]
    if need_r:
        dG_Rs = [gP @ (U @ G_L).mT for gP, U, G_L in zip(gPs, Us, G_Ls)]
    if need_l:
        dG_Ls = [(G_R @ U).mT @ gP for gP, U, G_R in zip(gPs, Us, G_Rs)]
    return dVs, dAs, dG_Rs, dG_Ls, None, None


for _name, _backward, _setup in (
    ("kron_qv", _kron_qv_backward, _kron_qv_setup),
    ("kron_diag", _kron_diag_backward, _kron_diag_setup),
    ("kron_qv_grouped", _kron_qv_grouped_backward, _kron_qv_grouped_setup),
):
    _CUSTOM[_name].register_autograd(_backward, setup_context=_setup)


# ----------------------------------------------------------------------------------------------- the ops
def kron_qv(
    V: Tensor, A: Tensor, G_R: Tensor, G_L: Tensor, *, precision: str = "fp32", backend: str | None = None
) -> Tensor:
    """Q(V) = A ⊙ (G_R · (A ⊙ V) · G_L) — the inverse-Fisher-vector product of one layer.

    Differentiable in V, A, G_R and G_L.

    Args:
        V: [m, n]; A: [m, n]; G_R: [m, m]; G_L: [n, n]; one floating dtype, one device.
        precision: GEMM mode, "fp32" | "tf32" | "bf16" (accumulation is fp32).
        backend: force a backend (see :func:`fls_kernels.use_backend`).

    Returns:
        [m, n] new tensor.

    Example:
        >>> Y = fls_kernels.kron_qv(V, A, R.T @ R, L @ L.T)
    """
    return _call("kron_qv", (V, A, G_R, G_L), backend, precision)


def kron_diag(A: Tensor, r: Tensor, l: Tensor, *, backend: str | None = None) -> Tensor:
    """diag(Q) = A² ⊙ (r lᵀ), laid out like W.

    Args:
        A: [m, n]; r: [m] = diag(RᵀR); l: [n] = diag(LLᵀ).
        backend: force a backend.

    Returns:
        [m, n] new tensor.
    """
    return _call("kron_diag", (A, r, l), backend)


def obs_scores(W: Tensor, A: Tensor, r: Tensor, l: Tensor, mask: Tensor, *, backend: str | None = None) -> Tensor:
    """ρ = W² / (2 · A² ⊙ (r lᵀ)), +inf where ``mask`` is False; diag Q is never materialised.

    Args:
        W: [m, n] weights; A: [m, n]; r: [m]; l: [n].
        mask: [m, n] bool, True where the weight is alive.
        backend: force a backend.

    Returns:
        [m, n] OBS saliencies (the loss increase of removing each weight alone).
    """
    return _call("obs_scores", (W, A, r, l, mask), backend)


def select_smallest(scores: Sequence[Tensor], k: int, *, backend: str | None = None) -> list[Tensor]:
    """Exact global k-smallest: bool masks with exactly ``k`` True over all ``scores`` together.

    Ties are broken by (tensor index, flat index); +inf is never selected.

    Args:
        scores: non-empty sequence of floating tensors of any shapes, one dtype, one device.
        k: number to select.
        backend: force a backend.

    Returns:
        one bool tensor per score tensor.

    Raises:
        ValueError: fewer than k scores below +inf, or NaN among them.
    """
    return _call("select_smallest", (scores, k), backend)


def select_nm(scores: Tensor, n: int, m: int, *, backend: str | None = None) -> Tensor:
    """N:M selection: in each group of ``m`` consecutive entries of every row, the ``n`` smallest (lower column
    first on ties).

    Args:
        scores: [rows, cols] floating, cols divisible by m.
        n, m: 0 ≤ n ≤ m, m ≥ 1.
        backend: force a backend.

    Returns:
        [rows, cols] bool with exactly n True per group.
    """
    return _call("select_nm", (scores, n, m), backend)


def surgeon_update_(
    W: Tensor,
    A: Tensor,
    G_R: Tensor,
    G_L: Tensor,
    r: Tensor,
    l: Tensor,
    prune: Tensor,
    keep: Tensor,
    *,
    precision: str = "fp32",
    backend: str | None = None,
) -> Tensor:
    """In place: Z = prune ⊙ W ⊘ (A² ⊙ r lᵀ);  W ← keep ⊙ (W − A ⊙ (G_R (A ⊙ Z) G_L)).

    The OBS update for removing the set ``prune`` at once (sum of single-weight updates), masked by ``keep``.

    Args:
        W: [m, n] weights, contiguous, modified in place.
        A: [m, n]; G_R: [m, m]; G_L: [n, n]; r: [m]; l: [n] — the Q block.
        prune: [m, n] bool, weights removed in this step.
        keep: [m, n] bool, weights alive afterwards.
        precision: GEMM mode, "fp32" | "tf32" | "bf16".
        backend: force a backend.

    Returns:
        W.
    """
    return _call("surgeon_update_", (W, A, G_R, G_L, r, l, prune, keep), backend, precision)


def kron_qv_grouped(
    Vs: Sequence[Tensor],
    As: Sequence[Tensor],
    G_Rs: Sequence[Tensor],
    G_Ls: Sequence[Tensor],
    *,
    precision: str = "fp32",
    backend: str | None = None,
) -> list[Tensor]:
    """[A_g ⊙ (G_R,g · (A_g ⊙ V_g) · G_L,g) for every layer g] — many layers' Q(V) in one (or a few) launches.

    Args:
        Vs: non-empty list of [m_g, n_g]; As: [m_g, n_g]; G_Rs: [m_g, m_g]; G_Ls: [n_g, n_g]; one floating
            dtype and one device for all.
        precision: GEMM mode, "fp32" | "tf32" | "bf16" (accumulation is fp32).
        backend: force a backend.

    Returns:
        one new [m_g, n_g] tensor per layer.

    Example:
        >>> Ys = fls_kernels.kron_qv_grouped([V1, V2], [A1, A2], [GR1, GR2], [GL1, GL2], precision="tf32")
    """
    return _call("kron_qv_grouped", (Vs, As, G_Rs, G_Ls), backend, precision)


def surgeon_update_grouped_(
    Ws: Sequence[Tensor],
    As: Sequence[Tensor],
    G_Rs: Sequence[Tensor],
    G_Ls: Sequence[Tensor],
    rs: Sequence[Tensor],
    ls: Sequence[Tensor],
    prunes: Sequence[Tensor],
    keeps: Sequence[Tensor],
    *,
    precision: str = "fp32",
    backend: str | None = None,
) -> list[Tensor]:
    """In place, for every layer g: Z_g = prune_g ⊙ W_g ⊘ (A_g² ⊙ r_g l_gᵀ);
    W_g ← keep_g ⊙ (W_g − A_g ⊙ (G_R,g (A_g ⊙ Z_g) G_L,g)) — a whole model's surgeon step in a few launches.

    Args:
        Ws: non-empty list of [m_g, n_g] contiguous weights (distinct tensors), modified in place.
        As: [m_g, n_g]; G_Rs: [m_g, m_g]; G_Ls: [n_g, n_g]; rs: [m_g]; ls: [n_g] — the Q blocks, Ws' dtype.
        prunes: [m_g, n_g] bool, removed now; keeps: [m_g, n_g] bool, alive afterwards.
        precision: GEMM mode, "fp32" | "tf32" | "bf16".
        backend: force a backend.

    Returns:
        Ws (as a list).
    """
    return _call("surgeon_update_grouped_", (Ws, As, G_Rs, G_Ls, rs, ls, prunes, keeps), backend, precision)


#: The ops of the table (``fls_kernels`` exports them); ``PRECISIONS`` stays importable from here.
__all__ = list(table.NAMES)
