"""Pruning on several processes with ``torch.distributed`` (NCCL on GPUs, gloo on CPUs).

    dist.init_process_group("nccl")                      # e.g. under torchrun
    pruner = fls.FishLegPruner(model, distributed=fls.Distributed("sharded"))
    pruner.fit(loader_of_this_rank, steps=2000)          # each rank its own batches
    pruner.prune(0.9, substeps=16)                       # the same masks and weights on every rank

"replicated": data-parallel — every rank computes Fisher-vector products, statistics and gradients on its own
batches; λ gradients (and statistics) are summed over ranks weighted by batch size, so every rank holds the
same λ and computes the same prune step — the result of one process on the union of the batches.

"sharded" (FLS and K-FAC-OBS): λ of each layer lives on one owner rank (balanced by m²n + mn², the cost of its
products); owners compute their layers' Q products, scores and updates; the global selection sums per-rank
histograms (:mod:`fls_kernels.distributed.select`); owners broadcast the updated weights and masks.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from fls_kernels.distributed.comm import MODES, Comm, RankFailure, assign_owners


@dataclass(frozen=True)
class Distributed:
    """How a pruner spreads its work over a process group.

    Args:
        mode: "replicated" (data-parallel) or "sharded" (λ, scores and updates by layer owner).
        group: the process group (None: the default group).
        bucket_mb: largest flattened buffer per collective, in MiB.
    """

    mode: str = "replicated"
    group: object = None
    bucket_mb: float = 25.0

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise ValueError(f"distributed: mode must be one of {MODES}, got {self.mode!r}")


def resolve(distributed: object, device: torch.device) -> tuple[Comm, str] | None:
    """(Comm, mode) for a pruner's ``distributed`` argument: None/False, True (replicated), a mode string or a
    :class:`Distributed`."""
    if distributed is None or distributed is False:
        return None
    if distributed is True:
        distributed = Distributed()
    elif isinstance(distributed, str):
        distributed = Distributed(distributed)
    elif not isinstance(distributed, Distributed):
        raise TypeError(f"distributed: expected a bool, a mode string or Distributed, got {type(distributed).__name__}")
    return Comm(distributed.group, distributed.bucket_mb, device), distributed.mode


__all__ = ["Comm", "Distributed", "RankFailure", "assign_owners", "resolve"]
