"""Problems for the op table: a random, well-conditioned layer, and any op's arguments bound from it.

A layer problem holds W, A, G_R, G_L, r, l and the masks alive, prune ⊂ alive and keep = alive ∖ prune
(:func:`random_problem`); the selection ops' arguments are derived from it where it does not hold them
(:data:`DERIVED`). :func:`bind` gives an op's positional arguments by its table entry's keys, so the ``compare``
command, the benchmark registry and the op tests build every op's call one way; :func:`example` binds the table's
small example problem of an op.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

import torch
from torch import Tensor

from fls_kernels.backends import table


def random_problem(
    m: int, n: int, *, seed: int = 0, prune_fraction: float = 0.5, device: torch.device | str = "cpu"
) -> dict[str, Tensor]:
    """A random, well-conditioned layer problem in float64 on ``device`` (the CPU by default; large problems are
    quicker to build on a GPU): W, A (in [0.5, 1.5)), G_R = RᵀR, G_L = LLᵀ (R, L near the identity), r, l, and
    masks ``alive`` (~75%), ``prune`` ⊂ alive, ``keep``, and the selection ops' ``scores`` (|round(2W)|: small
    integers, exact in every float dtype, with many ties; +inf where the weight is dead). The values depend on the
    device's generator."""
    g = torch.Generator(device=device).manual_seed(seed)
    f64 = dict(dtype=torch.float64, device=device)
    R = torch.eye(m, **f64) + torch.randn(m, m, generator=g, **f64) / (2 * m**0.5)
    L = torch.eye(n, **f64) + torch.randn(n, n, generator=g, **f64) / (2 * n**0.5)
    G_R, G_L = R.T @ R, L @ L.T
    alive = torch.rand(m, n, generator=g, device=device) > 0.25
    prune = alive & (torch.rand(m, n, generator=g, device=device) < prune_fraction)
    problem = dict(
        W=torch.randn(m, n, generator=g, **f64),
        A=torch.rand(m, n, generator=g, **f64) + 0.5,
        G_R=G_R,
        G_L=G_L,
        r=G_R.diagonal().clone(),
        l=G_L.diagonal().clone(),
        alive=alive,
        prune=prune,
        keep=alive & ~prune,
    )
    problem["scores"] = _scores(problem)
    return problem


def cast(problem: Mapping[str, object], dtype: torch.dtype, device: torch.device | str) -> dict[str, object]:
    """The problem's float tensors in ``dtype`` and every tensor on ``device`` (masks stay bool, other values as
    they are)."""

    def to(v: object) -> object:
        if not isinstance(v, Tensor):
            return v
        return v.to(device) if v.dtype == torch.bool else v.to(device=device, dtype=dtype)

    return {k: to(v) for k, v in problem.items()}


def _scores(p: Mapping) -> Tensor:
    return torch.where(p["alive"], (2 * p["W"]).round().abs(), torch.inf)


def _nm_scores(p: Mapping) -> Tensor:
    # the scores, repeated to at least 4 columns and cut to a multiple of 4 (ties and +inf included)
    s = argument(p, "scores")
    s = s.repeat(1, -(-4 // s.shape[1]))
    return s[:, : s.shape[1] // 4 * 4].contiguous()


#: Arguments derived from a layer problem that does not hold them: the selection ops' scores (as
#: :func:`random_problem` makes them), the global selection's list and count (half the selectable scores), and
#: N:M = 2:4 on the scores.
DERIVED: dict[str, Callable[[Mapping], object]] = {
    "scores": _scores,
    "score_list": lambda p: [argument(p, "scores")],
    "k": lambda p: int(argument(p, "scores").isfinite().sum()) // 2,
    "nm_scores": _nm_scores,
    "nm_n": lambda p: 2,
    "nm_m": lambda p: 4,
}


def argument(problem: Mapping, key: str) -> object:
    """``problem[key]``, or the argument :data:`DERIVED` makes from it."""
    if key in problem:
        return problem[key]
    if key not in DERIVED:
        raise KeyError(f"the problem has no {key!r} and none is derived (derived: {', '.join(DERIVED)})")
    return DERIVED[key](problem)


def _layers(problem: Mapping | Sequence[Mapping]) -> list[Mapping]:
    if isinstance(problem, Mapping):  # a dict of lists, one entry per layer
        count = len(next(iter(problem.values())))
        return [{k: v[i] for k, v in problem.items()} for i in range(count)]
    return list(problem)


def bind(op: str | table.Op, problem: Mapping | Sequence[Mapping], *, fresh: bool = True) -> tuple:
    """``op``'s positional arguments from ``problem``, by the table's keys.

    Args:
        op: an op name or table entry.
        problem: a layer problem; for a grouped op, a list of them or a dict of lists (each argument is then the
            list over the layers).
        fresh: give an in-place op a copy of its first argument (of each layer's), so the problem stays as it is.
    """
    spec = table.get(op) if isinstance(op, str) else op
    layers = _layers(problem) if spec.grouped else [problem]
    values = [[argument(p, a.key) for p in layers] for a in spec.args]
    if fresh and spec.mutates:
        values[0] = [t.clone() for t in values[0]]
    return tuple(v if spec.grouped else v[0] for v in values)


def example(
    op: str | table.Op, *, dtype: torch.dtype = torch.float64, device: torch.device | str = "cpu", seed: int = 0
) -> tuple:
    """``op``'s small example problem (its table entry's ``example`` layers, the i-th from ``seed + i``), bound."""
    spec = table.get(op) if isinstance(op, str) else op
    layers = [cast(random_problem(m, n, seed=seed + i), dtype, device) for i, (m, n) in enumerate(spec.example)]
    return bind(spec, layers if spec.grouped else layers[0])


__all__ = ["DERIVED", "argument", "bind", "cast", "example", "random_problem"]
