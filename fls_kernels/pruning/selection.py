"""Turning a sparsity target into exact counts and masks: global, uniform or per-layer allocation."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

from torch import Tensor

from fls_kernels import ops

ALLOCATIONS = ("global", "uniform")


def count(sparsity: float, total: int) -> int:
    """k = ⌈s·d⌉ zeros (rounded first so that 0.7·100 gives 70, not 71)."""
    return math.ceil(round(sparsity * total, 9))


def select(
    scores: Sequence[Tensor],
    new_counts: Sequence[int] | int,
    *,
    backend: str | None = None,
) -> list[Tensor]:
    """Masks of the weights to remove: the ``new_counts`` smallest scores globally (an int) or per layer (a
    sequence, one count per score tensor). Scores are +inf where already pruned."""
    if isinstance(new_counts, int):
        return ops.select_smallest(list(scores), new_counts, backend=backend)
    return [ops.select_smallest([s], k, backend=backend)[0] for s, k in zip(scores, new_counts)]


def per_layer_targets(
    sparsity: float | Mapping[str, float], names: Sequence[str], current: Mapping[str, float], allocation: str
) -> dict[str, float] | None:
    """Per-layer final sparsities (uniform or a mapping), or None for global allocation.

    Layers a mapping leaves out keep their current sparsity.
    """
    if isinstance(sparsity, Mapping):
        return {name: float(sparsity.get(name, current[name])) for name in names}
    if allocation == "uniform":
        return {name: float(sparsity) for name in names}
    return None
