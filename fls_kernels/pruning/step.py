"""One prune sub-step, written once for every method and execution mode: score → choose → update.

    scores  ρ = method.scores(W, alive)        per layer this rank computes (pattern units unless N:M)
    choose  P = the increment's selection       global k smallest, per-layer counts, or N:M per group
    update  W ← method.update(W, P, keep)       keep = alive ∧ ¬P; then shared between ranks and committed

Local work of each stage runs under the mode's guard, so a failure on any rank raises on every rank before a
weight or mask is written; the pruner's snapshot undoes earlier sub-steps.
"""

from __future__ import annotations

import torch
from torch import Tensor

from fls_kernels import timing
from fls_kernels.pruning.context import Context
from fls_kernels.pruning.method import Method
from fls_kernels.pruning.targets import Increment


def prune_substep(ctx: Context, method: Method, increment: Increment) -> None:
    """Remove ``increment`` from the layers: scores, selection, updates, then masks and weights committed."""
    if method.layerwise:
        _layer_by_layer(ctx, method, increment)
        return
    views, mode, masks = ctx.views, ctx.mode, ctx.masks
    layers = [i for i in range(len(views)) if mode.owns(i)]
    mats = [v.matrix(ctx.dtype) for v in views]
    alive = [masks.full(i) for i in range(len(views))]
    scores: list[Tensor | None] = [None] * len(views)
    with mode.guarded(), timing.section("scoring"):
        for i in layers:
            s = method.scores(i, mats[i], alive[i])
            scores[i] = method.unit_scores(i, mats[i], alive[i], s) if increment.per_unit else s
    with timing.section("selection"):
        chosen = increment.choose(ctx, scores, alive)
    keeps = [a if mode.owns(i) else torch.zeros_like(a) for i, a in enumerate(alive)]
    with mode.guarded(), timing.section("update"):
        method.selected(chosen)
        for i in layers:
            keeps[i] = _update(ctx, method, i, mats[i], alive[i], chosen[i])
    mode.share(mats, keeps)
    for i in range(len(views)):
        masks.commit(i, mats[i], keeps[i])
    masks.apply()


def _layer_by_layer(ctx: Context, method: Method, increment: Increment) -> None:
    """Layerwise methods: layer i is chosen, updated and committed after layers < i, so that what it measures
    comes from the model as already pruned. Every rank holds every layer (these methods are not shardable) and
    reduces its measurements over ranks, so each computes the same update."""
    for i, view in enumerate(ctx.views):
        W, alive = view.matrix(ctx.dtype), ctx.masks.full(i)
        with ctx.mode.guarded(), timing.section("update"):
            keep = method.prune_layer(i, W, alive, increment.budget(i))
        ctx.masks.commit(i, W, keep)
        ctx.masks.apply()


def _update(ctx: Context, method: Method, index: int, W: Tensor, alive: Tensor, chosen: Tensor) -> Tensor:
    """Update layer ``index``'s matrix W in place; returns its new alive mask [m, n]."""
    view = ctx.views[index]
    prune = chosen
    if view.has_bias:
        prune = torch.cat([prune, prune.new_zeros(view.m, 1)], dim=1)
    keep = alive & ~prune
    chosen = method.update(index, W, prune, keep)
    return keep if chosen is None else chosen
