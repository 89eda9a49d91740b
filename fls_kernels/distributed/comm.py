"""Collectives of a prune/fit step on a ``torch.distributed`` process group (NCCL on GPUs, gloo on CPUs).

Every rank issues the same collectives in the same order with the same shapes, whatever happens locally: a
rank whose local work fails records the error (:meth:`Comm.attempt`), contributes zeros, and the failure is
agreed on at the step's next check (:meth:`Comm.check`), where every rank raises before anything is committed.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator, Sequence

import torch
import torch.distributed as dist
from torch import Tensor

MODES = ("replicated", "sharded")


class RankFailure(RuntimeError):
    """Another rank's local work failed during a distributed step (that rank raises its own error)."""


class Comm:
    """One process group, its bucketed collectives and the step's failure agreement.

    Args:
        group: the process group (None: the default group).
        bucket_mb: largest flattened buffer per collective, in MiB (like DDP's ``bucket_cap_mb``).
        device: where small control tensors live (the model's device: NCCL needs CUDA tensors).
    """

    def __init__(
        self, group: dist.ProcessGroup | None = None, bucket_mb: float = 25.0, device: torch.device | str = "cpu"
    ) -> None:
        if not dist.is_available() or not dist.is_initialized():
            raise ValueError(
                "distributed: torch.distributed is not initialised; call torch.distributed.init_process_group "
                "(e.g. under torchrun) before creating the pruner"
            )
        if not (isinstance(bucket_mb, (int, float)) and math.isfinite(bucket_mb) and bucket_mb > 0):
            raise ValueError(f"bucket_mb: expected a positive number, got {bucket_mb!r}")
        self.group = group
        self.rank = dist.get_rank(group)
        self.world = dist.get_world_size(group)
        self.bucket_bytes = int(bucket_mb * 2**20)
        self.device = torch.device(device)
        self.error: BaseException | None = None

    def _global(self, rank: int) -> int:
        return rank if self.group is None else dist.get_global_rank(self.group, rank)

    # ------------------------------------------------------------------------------------------ failures
    @contextlib.contextmanager
    def attempt(self) -> Iterator[None]:
        """Run local work (no collectives inside); an exception is recorded (the first one wins) instead of
        raised, so this rank still joins the step's collectives and :meth:`check` raises on every rank."""
        try:
            yield
        except Exception as exc:  # noqa: BLE001 - re-raised by check() on every rank
            if self.error is None:
                self.error = exc

    @property
    def failed(self) -> bool:
        return self.error is not None

    def check(self, extra: Tensor | None = None) -> Tensor | None:
        """All ranks agree whether any failed (one all-reduce, carrying ``extra`` sums along); raise if so.

        Returns:
            ``extra`` summed over ranks.
        """
        flag = torch.tensor([float(self.failed)], dtype=torch.float64, device=self.device)
        buf = flag if extra is None else torch.cat([flag, extra.reshape(-1).to(self.device, torch.float64)])
        dist.all_reduce(buf, group=self.group)
        if buf[0].item() > 0:
            error, self.error = self.error, None
            if error is not None:  # the failing rank raises its own error
                error.add_note(f"rank {self.rank}: every rank of the step raised; none changed its model")
                raise error
            raise RankFailure(
                f"distributed step failed on {int(buf[0].item())} other rank(s); no rank changed its model"
            )
        return None if extra is None else buf[1:].to(extra.device, extra.dtype).reshape(extra.shape)

    # ------------------------------------------------------------------------------------------ buckets
    def _buckets(self, tensors: Sequence[Tensor]) -> Iterator[list[int]]:
        """Indices of ``tensors`` grouped into buffers of at most ``bucket_bytes`` (one dtype per bucket)."""
        bucket: list[int] = []
        size = 0
        for i, t in enumerate(tensors):
            nbytes = t.numel() * t.element_size()
            if bucket and (size + nbytes > self.bucket_bytes or t.dtype != tensors[bucket[0]].dtype):
                yield bucket
                bucket, size = [], 0
            bucket.append(i)
            size += nbytes
        if bucket:
            yield bucket

    def all_reduce_(self, tensors: Sequence[Tensor], op: str = "sum") -> None:
        """Sum (or "max", "min") every tensor over ranks, in place, one flattened buffer per bucket."""
        rop = {"sum": dist.ReduceOp.SUM, "max": dist.ReduceOp.MAX, "min": dist.ReduceOp.MIN}[op]
        self._bucketed(tensors, lambda buf: dist.all_reduce(buf, op=rop, group=self.group))

    def broadcast_(self, tensors: Sequence[Tensor], src: int) -> None:
        """Overwrite every tensor with rank ``src``'s (group rank), in place, bucketed."""
        self._bucketed(tensors, lambda buf: dist.broadcast(buf, src=self._global(src), group=self.group))

    def reduce_(self, tensors: Sequence[Tensor], dst: int) -> None:
        """Sum every tensor onto rank ``dst`` (group rank), in place there, bucketed."""
        self._bucketed(tensors, lambda buf: dist.reduce(buf, dst=self._global(dst), group=self.group))

    def _bucketed(self, tensors: Sequence[Tensor], collective) -> None:
        tensors = [t for t in tensors if t.numel()]
        for bucket in self._buckets(tensors):
            parts = [tensors[i] for i in bucket]
            dtype = parts[0].dtype
            wire = torch.uint8 if dtype == torch.bool else dtype
            buf = torch.cat([p.reshape(-1).to(wire) for p in parts])
            collective(buf)
            offset = 0
            for p in parts:
                p.copy_(buf[offset : offset + p.numel()].reshape(p.shape).to(dtype))
                offset += p.numel()

    def same(self, what: str, values: Sequence[float]) -> None:
        """ValueError naming ``what`` unless every rank passes the same ``values`` (two all-reduces)."""
        low = torch.tensor(list(values), dtype=torch.float64, device=self.device)
        high = low.clone()
        self.all_reduce_([low], "min")
        self.all_reduce_([high], "max")
        if not torch.equal(low, high):
            raise ValueError(f"{what}: differs between ranks (rank {self.rank} has {list(values)})")

    def sizes(self, local: int) -> list[int]:
        """Every rank's ``local`` integer (e.g. its batch size), in rank order."""
        buf = torch.zeros(self.world, dtype=torch.int64, device=self.device)
        buf[self.rank] = local
        dist.all_reduce(buf, group=self.group)
        return [int(x) for x in buf.tolist()]


def attempt(comm: Comm | None) -> contextlib.AbstractContextManager:
    """``comm.attempt()`` in a distributed step; a no-op (errors raise as usual) in one process."""
    return comm.attempt() if comm is not None else contextlib.nullcontext()


def assign_owners(costs: Sequence[float], world: int) -> list[int]:
    """Owner rank of each layer, balancing Σ cost per rank: largest first onto the least loaded rank (ties: the
    lower rank, then the earlier layer), the same on every rank. Cost of a layer: m²n + mn²."""
    load = [0.0] * world
    owners = [0] * len(costs)
    for i in sorted(range(len(costs)), key=lambda i: (-costs[i], i)):
        rank = min(range(world), key=lambda r: (load[r], r))
        owners[i] = rank
        load[rank] += costs[i]
    return owners
