"""One prune sub-step with layers sharded over ranks: owners score, the selection sums per-rank histograms,
owners update, and every layer's new weights and mask are broadcast from its owner.

Each phase of local work is followed by an agreement (``Comm.check``), so a failure on any rank raises on
every rank before any weight is written, and :meth:`BasePruner.prune` restores its snapshot everywhere.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

from fls_kernels import timing
from fls_kernels.distributed import select as dselect

if TYPE_CHECKING:
    from fls_kernels.pruning.base import BasePruner


def prune_once(pruner: BasePruner, kind: str, new: object) -> None:
    """The sharded counterpart of ``BasePruner._prune_once`` (same scores, selection rule and updates)."""
    comm, views = pruner.comm, pruner.views
    owned = [i for i in range(len(views)) if pruner.owns(i)]
    dtype = pruner._work_dtype()
    mats = [v.matrix(dtype) for v in views]
    alive = [pruner.full_mask(i) for i in range(len(views))]
    scores: list = [None] * len(views)
    with comm.attempt(), timing.section("scoring"):
        for i in owned:
            s = pruner._scores(i, mats[i], alive[i])
            scores[i] = s if kind == "nm" else pruner._unit_scores(i, mats[i], alive[i], s)
    comm.check()
    chosen: list = [None] * len(views)
    with timing.section("selection"):
        if kind == "global":
            picked = dselect.select_smallest(scores, new, comm)
            chosen = [pruner.pattern.expand(c) if c is not None else None for c in picked]
        else:
            with comm.attempt():
                local = pruner._choose(kind, new, scores, alive, owned)
                for i in owned:
                    chosen[i] = local[i]
            comm.check()
    keeps = [torch.zeros_like(a) for a in alive]
    with comm.attempt(), timing.section("update"):
        pruner._selected([c for c in chosen if c is not None])
        for i in owned:
            keeps[i] = pruner._apply_one(i, mats[i], alive[i], chosen[i])
    comm.check()
    with timing.section("communication"):
        for rank in range(comm.world):
            mine = [i for i in range(len(views)) if pruner.owners[i] == rank]
            comm.broadcast_([mats[i] for i in mine] + [keeps[i] for i in mine], rank)
    for i in range(len(views)):
        pruner._commit(i, mats[i], keeps[i])
    pruner._keeper.apply()


__all__ = ["prune_once"]
