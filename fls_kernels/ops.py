"""The op contracts, each declared once as a ``torch.library`` custom op ``fls::<op>``.

A public function here validates its arguments (errors name the argument), picks a backend
(:mod:`fls_kernels.backends`) and calls the custom op, whose body runs that backend's launcher. The custom
ops carry fake (meta) kernels and, for ``kron_qv``, ``kron_diag`` and ``kron_qv_grouped``, autograd formulas
built from the ops themselves (the grouped backward's Q-shaped products in grouped launches too), so they work
under ``torch.compile(fullgraph=True)`` and ``torch.func``.

A layer is a matrix W: [m, n] (bias folded in as the last column) with its block of
Q = D_A (G_R ⊗ G_L) D_A: A: [m, n], G_R = RᵀR: [m, m], G_L = LLᵀ: [n, n], r = diag G_R, l = diag G_L.
The ``*_grouped`` ops take one list per argument, a layer per entry, so a model's many small layers share
one launch; their errors name the list and the layer (``Ws[3]: ...``).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from fls_kernels import backends
from fls_kernels.backends import kernel, table
from fls_kernels.backends.table import PRECISIONS

_FLOATS = (torch.float64, torch.float32, torch.bfloat16, torch.float16)


# ----------------------------------------------------------------------------------------------- validation
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


def _block(first: str, W: object, A: object, G_R: object = None, G_L: object = None) -> tuple[int, int]:
    W = _matrix(first, W)
    m, n = W.shape
    _float("A", A, (m, n), W)
    if G_R is not None:
        _float("G_R", G_R, (m, m), W)
        _float("G_L", G_L, (n, n), W)
    return m, n


# ----------------------------------------------------------------------------------------------- kron_qv
@torch.library.custom_op("fls::kron_qv", mutates_args=())
def _kron_qv(V: Tensor, A: Tensor, G_R: Tensor, G_L: Tensor, precision: str, backend: str) -> Tensor:
    return kernel(backend, "kron_qv")(V, A, G_R, G_L, precision=precision)


@_kron_qv.register_fake
def _(V, A, G_R, G_L, precision, backend):
    return torch.empty_like(V)


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


_kron_qv.register_autograd(_kron_qv_backward, setup_context=_kron_qv_setup)


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
    _block("V", V, A, G_R, G_L)
    device = _same_device(V=V, A=A, G_R=G_R, G_L=G_L)
    precision = _precision(precision)
    name = backends.select("kron_qv", device, V.dtype, backend)
    return _kron_qv(V, A, G_R, G_L, precision, name)


# ----------------------------------------------------------------------------------------------- kron_diag
@torch.library.custom_op("fls::kron_diag", mutates_args=())
def _kron_diag(A: Tensor, r: Tensor, l: Tensor, backend: str) -> Tensor:
    return kernel(backend, "kron_diag")(A, r, l)


@_kron_diag.register_fake
def _(A, r, l, backend):
    return torch.empty_like(A)


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


_kron_diag.register_autograd(_kron_diag_backward, setup_context=_kron_diag_setup)


def kron_diag(A: Tensor, r: Tensor, l: Tensor, *, backend: str | None = None) -> Tensor:
    """diag(Q) = A² ⊙ (r lᵀ), laid out like W.

    Args:
        A: [m, n]; r: [m] = diag(RᵀR); l: [n] = diag(LLᵀ).
        backend: force a backend.

    Returns:
        [m, n] new tensor.
    """
    A = _matrix("A", A)
    m, n = A.shape
    _float("r", r, (m,), A)
    _float("l", l, (n,), A)
    device = _same_device(A=A, r=r, l=l)
    return _kron_diag(A, r, l, backends.select("kron_diag", device, A.dtype, backend))


# ----------------------------------------------------------------------------------------------- obs_scores
@torch.library.custom_op("fls::obs_scores", mutates_args=())
def _obs_scores(W: Tensor, A: Tensor, r: Tensor, l: Tensor, mask: Tensor, backend: str) -> Tensor:
    return kernel(backend, "obs_scores")(W, A, r, l, mask)


@_obs_scores.register_fake
def _(W, A, r, l, mask, backend):
    return torch.empty_like(W)


def obs_scores(W: Tensor, A: Tensor, r: Tensor, l: Tensor, mask: Tensor, *, backend: str | None = None) -> Tensor:
    """ρ = W² / (2 · A² ⊙ (r lᵀ)), +inf where ``mask`` is False; diag Q is never materialised.

    Args:
        W: [m, n] weights; A: [m, n]; r: [m]; l: [n].
        mask: [m, n] bool, True where the weight is alive.
        backend: force a backend.

    Returns:
        [m, n] OBS saliencies (the loss increase of removing each weight alone).
    """
    m, n = _block("W", W, A)
    _float("r", r, (m,), W)
    _float("l", l, (n,), W)
    _bool("mask", mask, (m, n))
    device = _same_device(W=W, A=A, r=r, l=l, mask=mask)
    return _obs_scores(W, A, r, l, mask, backends.select("obs_scores", device, W.dtype, backend))


# ----------------------------------------------------------------------------------------------- selection
@torch.library.custom_op("fls::select_smallest", mutates_args=())
def _select_smallest(scores: list[Tensor], k: int, backend: str) -> list[Tensor]:
    return kernel(backend, "select_smallest")(scores, k)


@_select_smallest.register_fake
def _(scores, k, backend):
    return [torch.empty_like(s, dtype=torch.bool) for s in scores]


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
    if isinstance(scores, Tensor) or not isinstance(scores, Sequence) or len(scores) == 0:
        raise TypeError("scores: expected a non-empty list of tensors")
    if isinstance(k, bool) or not isinstance(k, int):
        raise TypeError(f"k: expected an int, got {type(k).__name__}")
    if k < 0:
        raise ValueError(f"k: must be ≥ 0, got {k}")
    first = _tensor("scores[0]", scores[0])
    for i, s in enumerate(scores):
        s = _tensor(f"scores[{i}]", s)
        _float(f"scores[{i}]", s, tuple(s.shape), first)
    device = _same_device(**{f"scores[{i}]": s for i, s in enumerate(scores)})
    name = backends.select("select_smallest", device, first.dtype, backend)
    return _select_smallest(list(scores), k, name)


@torch.library.custom_op("fls::select_nm", mutates_args=())
def _select_nm(scores: Tensor, n: int, m: int, backend: str) -> Tensor:
    return kernel(backend, "select_nm")(scores, n, m)


@_select_nm.register_fake
def _(scores, n, m, backend):
    return torch.empty_like(scores, dtype=torch.bool)


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
    scores = _matrix("scores", scores)
    for name, value in (("n", n), ("m", m)):
        if isinstance(value, bool) or not isinstance(value, int):
            raise TypeError(f"{name}: expected an int, got {type(value).__name__}")
    if m < 1 or not 0 <= n <= m:
        raise ValueError(f"n, m: need 0 ≤ n ≤ m and m ≥ 1, got n={n}, m={m}")
    if scores.shape[1] % m:
        raise ValueError(f"scores: {scores.shape[1]} columns are not divisible into groups of m={m}")
    return _select_nm(scores, n, m, backends.select("select_nm", scores.device, scores.dtype, backend))


# ----------------------------------------------------------------------------------------------- surgeon update
@torch.library.custom_op("fls::surgeon_update_", mutates_args=("W",))
def _surgeon_update(
    W: Tensor,
    A: Tensor,
    G_R: Tensor,
    G_L: Tensor,
    r: Tensor,
    l: Tensor,
    prune: Tensor,
    keep: Tensor,
    precision: str,
    backend: str,
) -> None:
    kernel(backend, "surgeon_update_")(W, A, G_R, G_L, r, l, prune, keep, precision=precision)


@_surgeon_update.register_fake
def _(W, A, G_R, G_L, r, l, prune, keep, precision, backend):
    return None


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
    m, n = _block("W", W, A, G_R, G_L)
    if not W.is_contiguous():
        raise ValueError("W: must be contiguous to be updated in place")
    _float("r", r, (m,), W)
    _float("l", l, (n,), W)
    _bool("prune", prune, (m, n))
    _bool("keep", keep, (m, n))
    device = _same_device(W=W, A=A, G_R=G_R, G_L=G_L, r=r, l=l, prune=prune, keep=keep)
    precision = _precision(precision)
    name = backends.select("surgeon_update_", device, W.dtype, backend)
    _surgeon_update(W, A, G_R, G_L, r, l, prune, keep, precision, name)
    return W


# ----------------------------------------------------------------------------------------------- grouped ops
def _layers(name: str, seq: object, count: int | None = None) -> list[Tensor]:
    if isinstance(seq, Tensor) or not isinstance(seq, Sequence) or len(seq) == 0:
        raise TypeError(f"{name}: expected a non-empty list of tensors, one per layer")
    if count is not None and len(seq) != count:
        raise ValueError(f"{name}: expected {count} tensors (one per layer), got {len(seq)}")
    return list(seq)


def _grouped_blocks(first: str, Xs: object, As: object, G_Rs: object, G_Ls: object) -> list[tuple[int, int]]:
    """Validate per-layer [m, n] blocks of one dtype; errors name the list and the layer (``As[3]: ...``)."""
    Xs = _layers(first, Xs)
    As, G_Rs, G_Ls = (_layers(name, seq, len(Xs)) for name, seq in (("As", As), ("G_Rs", G_Rs), ("G_Ls", G_Ls)))
    like = _matrix(f"{first}[0]", Xs[0])
    shapes = []
    for i, X in enumerate(Xs):
        X = _matrix(f"{first}[{i}]", X)
        if X.dtype != like.dtype:
            raise TypeError(f"{first}[{i}]: dtype {X.dtype} differs from {like.dtype} of {first}[0]")
        m, n = X.shape
        _float(f"As[{i}]", As[i], (m, n), like)
        _float(f"G_Rs[{i}]", G_Rs[i], (m, m), like)
        _float(f"G_Ls[{i}]", G_Ls[i], (n, n), like)
        shapes.append((m, n))
    return shapes


def _grouped_device(**lists: list[Tensor]) -> torch.device:
    return _same_device(**{f"{name}[{i}]": t for name, seq in lists.items() for i, t in enumerate(seq)})


@torch.library.custom_op("fls::kron_qv_grouped", mutates_args=())
def _kron_qv_grouped(
    Vs: list[Tensor], As: list[Tensor], G_Rs: list[Tensor], G_Ls: list[Tensor], precision: str, backend: str
) -> list[Tensor]:
    return kernel(backend, "kron_qv_grouped")(Vs, As, G_Rs, G_Ls, precision=precision)


@_kron_qv_grouped.register_fake
def _(Vs, As, G_Rs, G_Ls, precision, backend):
    return [V.new_empty(V.shape) for V in Vs]


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


_kron_qv_grouped.register_autograd(_kron_qv_grouped_backward, setup_context=_kron_qv_grouped_setup)


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
    _grouped_blocks("Vs", Vs, As, G_Rs, G_Ls)
    device = _grouped_device(Vs=Vs, As=As, G_Rs=G_Rs, G_Ls=G_Ls)
    precision = _precision(precision)
    name = backends.select("kron_qv_grouped", device, Vs[0].dtype, backend)
    return _kron_qv_grouped(list(Vs), list(As), list(G_Rs), list(G_Ls), precision, name)


@torch.library.custom_op("fls::surgeon_update_grouped_", mutates_args=("Ws",))
def _surgeon_update_grouped(
    Ws: list[Tensor],
    As: list[Tensor],
    G_Rs: list[Tensor],
    G_Ls: list[Tensor],
    rs: list[Tensor],
    ls: list[Tensor],
    prunes: list[Tensor],
    keeps: list[Tensor],
    precision: str,
    backend: str,
) -> None:
    kernel(backend, "surgeon_update_grouped_")(Ws, As, G_Rs, G_Ls, rs, ls, prunes, keeps, precision=precision)


@_surgeon_update_grouped.register_fake
def _(Ws, As, G_Rs, G_Ls, rs, ls, prunes, keeps, precision, backend):
    return None


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
    shapes = _grouped_blocks("Ws", Ws, As, G_Rs, G_Ls)
    count = len(shapes)
    rs, ls, prunes, keeps = (
        _layers(name, seq, count) for name, seq in (("rs", rs), ("ls", ls), ("prunes", prunes), ("keeps", keeps))
    )
    for i, (m, n) in enumerate(shapes):
        if not Ws[i].is_contiguous():
            raise ValueError(f"Ws[{i}]: must be contiguous to be updated in place")
        for j in range(i):
            if Ws[j] is Ws[i]:
                raise ValueError(f"Ws[{i}]: the same tensor as Ws[{j}]; each layer must be updated once")
        _float(f"rs[{i}]", rs[i], (m,), Ws[0])
        _float(f"ls[{i}]", ls[i], (n,), Ws[0])
        _bool(f"prunes[{i}]", prunes[i], (m, n))
        _bool(f"keeps[{i}]", keeps[i], (m, n))
    device = _grouped_device(Ws=Ws, As=As, G_Rs=G_Rs, G_Ls=G_Ls, rs=rs, ls=ls, prunes=prunes, keeps=keeps)
    precision = _precision(precision)
    name = backends.select("surgeon_update_grouped_", device, Ws[0].dtype, backend)
    _surgeon_update_grouped(
        list(Ws), list(As), list(G_Rs), list(G_Ls), list(rs), list(ls), list(prunes), list(keeps), precision, name
    )
    return list(Ws)


#: The ops of the table (``fls_kernels`` exports them); ``PRECISIONS`` stays importable from here.
__all__ = list(table.NAMES)
