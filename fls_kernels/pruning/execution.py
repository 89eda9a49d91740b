"""Where a pruner's work runs: one process, or every rank of a ``torch.distributed`` group.

One interface, three modes; the prune step (:mod:`~fls_kernels.pruning.step`) and the aux fitter are written
once against it:

- :class:`Local`: one process — local work raises at once, nothing is exchanged.
- :class:`Replicated`: data-parallel — every rank holds every layer; curvature is reduced over ranks, each
  rank computes the same step, and local failures are agreed on before anything is written.
- :class:`Sharded`: each layer's method state lives on one owner rank (balanced by m²n + mn²); owners score
  and update their layers, the global selection sums per-rank histograms, owners broadcast weights and masks.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Sequence

import torch
from torch import Tensor

from fls_kernels import ops, timing
from fls_kernels.curvature.reduction import AuxReduction, ReplicatedReduction, ShardedReduction
from fls_kernels.distributed import Comm, assign_owners, resolve
from fls_kernels.distributed import select as dselect
from fls_kernels.layers.views import LayerView


class ExecutionMode:
    """The interface of every mode; its own behaviour is that of one process (nothing exchanged)."""

    name = "local"
    comm: Comm | None = None
    owners: list[int] | None = None

    def owns(self, index: int) -> bool:
        """Whether this process computes layer ``index``."""
        return True

    def guarded(self) -> contextlib.AbstractContextManager:
        """Local work of a step whose failure every rank must agree on before anything is written."""
        return contextlib.nullcontext()

    def select_smallest(self, scores: list[Tensor | None], k: int, backend: str | None) -> list[Tensor | None]:
        """Masks of the ``k`` smallest scores over every layer (None for layers this rank does not own)."""
        return ops.select_smallest(scores, k, backend=backend)

    def share(self, mats: list[Tensor], keeps: list[Tensor]) -> None:
        """Give every rank each layer's updated matrix and mask (in place)."""

    def aux_reduction(self, batch_size: Callable[[object], int]) -> AuxReduction:
        """How the aux fitter combines its probes, products and λ gradients over ranks."""
        return AuxReduction()

    def shard(self) -> dict | None:
        """Which layers' method state this rank holds (None: all of them), recorded in checkpoints."""
        return None


class Local(ExecutionMode):
    """One process."""


class Replicated(ExecutionMode):
    """Every rank holds every layer and reads its own batches."""

    name = "replicated"

    def __init__(self, comm: Comm) -> None:
        self.comm = comm

    @contextlib.contextmanager
    def guarded(self) -> Iterator[None]:
        with self.comm.attempt():
            yield
        self.comm.check()

    def select_smallest(self, scores: list[Tensor | None], k: int, backend: str | None) -> list[Tensor | None]:
        picked: list[Tensor | None] = []
        with self.guarded():
            picked = super().select_smallest(scores, k, backend)
        return picked

    def aux_reduction(self, batch_size: Callable[[object], int]) -> AuxReduction:
        return ReplicatedReduction(self.comm, batch_size)


class Sharded(Replicated):
    """Each layer's method state on its owner rank."""

    name = "sharded"

    def __init__(self, comm: Comm, owners: Sequence[int]) -> None:
        super().__init__(comm)
        self.owners = list(owners)

    def owns(self, index: int) -> bool:
        return self.owners[index] == self.comm.rank

    def select_smallest(self, scores: list[Tensor | None], k: int, backend: str | None) -> list[Tensor | None]:
        return dselect.select_smallest(scores, k, self.comm)

    def share(self, mats: list[Tensor], keeps: list[Tensor]) -> None:
        with timing.section("communication"):
            for rank in range(self.comm.world):
                mine = [i for i, owner in enumerate(self.owners) if owner == rank]
                self.comm.broadcast_([mats[i] for i in mine] + [keeps[i] for i in mine], rank)

    def aux_reduction(self, batch_size: Callable[[object], int]) -> AuxReduction:
        return ShardedReduction(self.comm, batch_size, self.owners)

    def shard(self) -> dict | None:
        return {"owners": list(self.owners), "rank": self.comm.rank}


def create(
    distributed: object, views: list[LayerView], device: torch.device, *, shardable: bool, who: str
) -> ExecutionMode:
    """The mode for a pruner's ``distributed`` argument (None/False: local; True / "replicated" / "sharded" /
    a :class:`~fls_kernels.distributed.Distributed`), after checking that every rank holds the same model.

    Raises:
        ValueError: no process group, "sharded" for a method that cannot shard (``who`` names the pruner), or
            ranks holding different layer shapes or weights.
    """
    resolved = resolve(distributed, device)
    if resolved is None:
        return Local()
    comm, name = resolved
    if name == "sharded":
        if not shardable:
            raise ValueError(
                f"distributed: {who} supports 'replicated' only; 'sharded' applies to the Kronecker-factored "
                "pruners (FishLegPruner, KFACPruner)"
            )
        mode: ExecutionMode = Sharded(
            comm, assign_owners([v.m * v.m * v.n + v.m * v.n * v.n for v in views], comm.world)
        )
    else:
        mode = Replicated(comm)
    shapes = [float(x) for v in views for x in (v.m, v.n)]
    comm.same("model", [float(len(views)), *shapes])
    checksum = sum(float(p.detach().double().sum()) for v in views for p in v.parameters().values())
    comm.same("model weights (start every rank from the same model, e.g. after DDP's broadcast)", [checksum])
    return mode


__all__ = ["ExecutionMode", "Local", "Replicated", "Sharded", "create"]
