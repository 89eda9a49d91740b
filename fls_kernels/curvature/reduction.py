"""How the pieces of one aux step combine over processes, injected into :class:`~.fitter.AuxFitter`.

The fitter computes one step the same way everywhere; a reduction says what is exchanged between its stages:

- :class:`AuxReduction` (one process): nothing — every hook is the identity.
- :class:`ReplicatedReduction` (data-parallel): each rank computes F v on its own batch; the λ gradients are
  summed over ranks weighted by batch size, so every rank takes the step of one process on the union.
- :class:`ShardedReduction` (per-layer owners): v of each block is broadcast from its owner, F v (times the
  rank's rows) is reduced onto the owner and divided by the union's rows; only owners hold λ.

Distributed reductions record a local failure (:meth:`attempt`) and agree on it at their next collective check,
so every rank raises before any λ changes.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Sequence

import torch
from torch import Tensor, nn

from fls_kernels import timing
from fls_kernels.distributed.comm import Comm


class AuxReduction:
    """One process: nothing to exchange."""

    #: whether every step must be checked on the host before λ moves (distributed: the ranks agree on failures)
    checks_each_step = False

    def attempt(self) -> contextlib.AbstractContextManager:
        """Local work whose failure must be agreed on (one process: errors raise at once)."""
        return contextlib.nullcontext()

    def rows(self, batch: object) -> int:
        """This process's samples in ``batch`` (only distributed reductions need them)."""
        return 0

    def gather_probes(self, us: list[Tensor], vs: list[Tensor | None]) -> list[Tensor | None]:
        """Every block's v = Q u, for the Fisher-vector product of the whole model."""
        return vs

    def reduce_products(self, fvs: list[Tensor], rows: int) -> tuple[list[Tensor], float]:
        """(F v per block, the factor F v is read with) once combined over processes."""
        return fvs, 1.0

    def reduce_gradients(
        self, params: Sequence[nn.Parameter], rows: int, loss: Tensor
    ) -> tuple[Tensor | float, list[Tensor] | None]:
        """(the step's aux loss, the λ gradients to step with — None: keep ``p.grad`` as computed)."""
        return loss, None


class _Distributed(AuxReduction):
    checks_each_step = True

    def __init__(self, comm: Comm, batch_size: Callable[[object], int]) -> None:
        self.comm = comm
        self.batch_size = batch_size

    def attempt(self) -> contextlib.AbstractContextManager:
        return self.comm.attempt()

    def rows(self, batch: object) -> int:
        return int(self.batch_size(batch))

    @staticmethod
    def _grads(params: Sequence[nn.Parameter]) -> list[Tensor]:
        return [p.grad if p.grad is not None else torch.zeros_like(p) for p in params]


class ReplicatedReduction(_Distributed):
    """Data-parallel: λ gradients summed over ranks, weighted by each rank's batch size (bucketed)."""

    def reduce_gradients(self, params: Sequence[nn.Parameter], rows: int, loss: Tensor) -> tuple[float, list[Tensor]]:
        grads = self._grads(params)
        loss = float(loss)
        for g in grads:
            g.mul_(rows)
        with timing.section("communication"):
            self.comm.all_reduce_(grads)
        sums = self.comm.check(torch.tensor([float(rows), loss * rows]))
        total = sums[0].item()
        for g in grads:
            g.div_(total)
        return sums[1].item() / total, grads


class ShardedReduction(_Distributed):
    """Per-layer owners: v broadcast from each block's owner, F v reduced onto it."""

    def __init__(self, comm: Comm, batch_size: Callable[[object], int], owners: Sequence[int]) -> None:
        super().__init__(comm, batch_size)
        self.owners = list(owners)

    def _by_owner(self, tensors: list[Tensor], collective: Callable[[list[Tensor], int], None]) -> None:
        with timing.section("communication"):
            for rank in range(self.comm.world):
                collective([tensors[i] for i, o in enumerate(self.owners) if o == rank], rank)

    def gather_probes(self, us: list[Tensor], vs: list[Tensor | None]) -> list[Tensor | None]:
        full = [v.detach().clone() if v is not None else torch.zeros_like(u) for u, v in zip(us, vs)]
        self._by_owner(full, self.comm.broadcast_)
        return [v if v is not None else f for v, f in zip(vs, full)]

    def reduce_products(self, fvs: list[Tensor], rows: int) -> tuple[list[Tensor], float]:
        fvs = [f * rows for f in fvs]  # Σ over this rank's rows, summed onto the owners below
        self._by_owner(fvs, self.comm.reduce_)
        total = self.comm.check(torch.tensor([float(rows)]))[0].item()
        return fvs, 1.0 / max(total, 1.0)

    def reduce_gradients(self, params: Sequence[nn.Parameter], rows: int, loss: Tensor) -> tuple[float, list[Tensor]]:
        grads = self._grads(params)
        return self.comm.check(torch.tensor([float(loss)]))[0].item(), grads


__all__ = ["AuxReduction", "ReplicatedReduction", "ShardedReduction"]
