"""Wanda (Sun et al., 2024): prune by weight magnitude times input-feature norm, no update.

    S_ij = |W_ij| · ‖X_j‖₂     (‖X_j‖₂² = Σ over calibration tokens of the j-th input feature squared)

compared within each output row (the paper's default, ``comparison="row"``) or over the whole layer
(``"layer"``); N:M: within each group of M inputs of a row. Layers are pruned in model order, each measured on the
inputs of the model pruned so far, as the official code does (:mod:`.layerwise`).
"""

from __future__ import annotations

import torch
from torch import Tensor

from fls_kernels import ops
from fls_kernels.pruning.checks import choice
from fls_kernels.pruning.methods.layerwise import Layerwise
from fls_kernels.pruning.patterns import NMPattern
from fls_kernels.pruning.pruner import Pruner
from fls_kernels.pruning.targets import Budget, select_nm_alive

COMPARISONS = ("row", "layer")


def row_balanced(scores: Tensor, dead: Tensor, new: int) -> Tensor:
    """The ``new`` weights that keep every row's pruned count as even as possible: each row's alive weights in
    order of score, taken by their position in the row (counting its pruned weights first), ties by score.
    scores, dead: [m, n]; returns [m, n] bool."""
    order = scores.masked_fill(dead, float("-inf")).argsort(dim=1, stable=True)
    position = torch.empty_like(order)
    position.scatter_(1, order, torch.arange(scores.shape[1], device=scores.device).expand_as(order))
    alive = ~dead
    key_score = scores[alive]
    key_position = position[alive]
    by_score = key_score.argsort(stable=True)
    by_position = key_position[by_score].argsort(stable=True)
    picked = by_score[by_position[:new]]
    out = torch.zeros(int(alive.sum()), dtype=torch.bool, device=scores.device)
    out[picked] = True
    chosen = torch.zeros_like(dead)
    chosen[alive] = out
    return chosen


class Wanda(Layerwise):
    """|W| · ‖X‖₂ scores from the layer's inputs (see the module docstring).

    Args:
        comparison: "row" (each output row to the same sparsity) or "layer" (one ranking per layer).
        **kwargs: ``calib_batches``, ``inputs``, ``true_sequential``
            (:class:`~fls_kernels.pruning.methods.layerwise.Layerwise`).
    """

    name = "wanda"

    def __init__(self, *, comparison: str = "row", **kwargs) -> None:
        self.comparison = choice("comparison", comparison, COMPARISONS)
        super().__init__(**kwargs)

    def layer_scores(self, index: int, W: Tensor) -> Tensor:
        """S = |W| · ‖X_j‖₂ over the weight columns, [m, n_weight]."""
        view = self.ctx.views[index]
        norms = self.moments(index, diagonal=True).total.sqrt().to(W.dtype)  # [g, n]
        g = norms.shape[0]
        per_row = norms.repeat_interleave(view.m // g, dim=0)[:, : view.n_weight]
        return W[:, : view.n_weight].abs() * per_row

    def prune_layer(self, index: int, W: Tensor, alive: Tensor, budget: Budget) -> Tensor:
        view, pattern = self.ctx.views[index], self.ctx.pattern
        n = view.n_weight
        scores = self.layer_scores(index, W)
        live = alive[:, :n]
        if isinstance(pattern, NMPattern):
            chosen = select_nm_alive(self.ctx, scores, live, budget.zeros)
        elif self.comparison == "row":
            chosen = row_balanced(scores, ~live, budget.new)
        else:
            ranked = scores.masked_fill(~live, float("inf"))
            chosen = ops.select_smallest([ranked], budget.new, backend=self.ctx.backend_for("select_smallest"))[0]
        keep = alive.clone()
        keep[:, :n] &= ~chosen
        W.masked_fill_(~keep, 0)
        return keep


class WandaPruner(Pruner):
    """Wanda: |W_ij| · ‖X_j‖₂ per output row, layer by layer on the inputs of the already-pruned model, no weight
    update; unstructured or N:M, each layer to the same sparsity (``allocation="uniform"``, the default here) or
    to a per-layer dict.

    Args: ``comparison``, ``calib_batches``, ``inputs``, ``true_sequential`` and the
    :class:`~fls_kernels.pruning.pruner.Pruner` arguments.
    """

    method_class = Wanda
