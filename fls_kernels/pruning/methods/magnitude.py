"""Magnitude pruning: remove the smallest |θ| (no curvature, no compensating update)."""

from __future__ import annotations

import torch
from torch import Tensor

from fls_kernels.pruning.method import Method
from fls_kernels.pruning.pruner import Pruner


class Magnitude(Method):
    """Score ρ_q = |θ_q|; no data needed."""

    name = "magnitude"
    needs_data = False

    def scores(self, index: int, W: Tensor, alive: Tensor) -> Tensor:
        n = self.ctx.views[index].n_weight
        return torch.where(alive[:, :n], W[:, :n].abs(), torch.full_like(W[:, :n], float("inf")))


class MagnitudePruner(Pruner):
    """Score ρ_q = |θ_q|; same life cycle, patterns, schedules, selection rules and exactness as
    :class:`FishLegPruner`. :meth:`fit` accepts (and ignores) a loader, so benchmarks can swap classes.

    Args: the :class:`~fls_kernels.pruning.pruner.Pruner` arguments.
    """

    method_class = Magnitude
