"""MagnitudePruner: remove the smallest |θ| (no curvature, no compensating update)."""

from __future__ import annotations

import torch
from torch import Tensor

from fls_kernels.pruning.base import BasePruner


class MagnitudePruner(BasePruner):
    """Score ρ_q = |θ_q|; same life cycle, patterns, schedules, selection rules and exactness as
    :class:`FishLegPruner`. :meth:`fit` only attaches data (none is needed), so benchmarks can swap classes."""

    def fit(self, loader: object = None, steps: int = 0) -> list[float]:
        """Accepts (and ignores) a loader; returns an empty history."""
        self._check_alive()
        return []

    def _scores(self, index: int, W: Tensor, alive: Tensor) -> Tensor:
        n = self.views[index].n_weight
        return torch.where(alive[:, :n], W[:, :n].abs(), torch.full_like(W[:, :n], float("inf")))
