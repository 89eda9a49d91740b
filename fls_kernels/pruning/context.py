"""What a pruner hands its method: the layers, their masks, the data and where the work runs."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from fls_kernels import backends
from fls_kernels.data import BatchStream, split_batch
from fls_kernels.layers.views import LayerView
from fls_kernels.pruning.execution import ExecutionMode
from fls_kernels.pruning.maskstate import MaskState
from fls_kernels.pruning.patterns import NMPattern, Pattern


class DataFeed:
    """The calibration data attached by ``fit``, as a resumable :class:`~fls_kernels.data.BatchStream`.

    Args:
        owner: the pruner's name, for errors.
        device: where the model lives; batches must be there too.
    """

    def __init__(self, owner: str, device: torch.device) -> None:
        self.owner = owner
        self.device = device
        self.stream: BatchStream | None = None
        self._resume = 0

    def check(self, batch: object) -> None:
        """ValueError when a tensor of ``batch`` is not on the model's device."""
        args, kwargs = split_batch(batch)
        for t in list(args) + list(kwargs.values()):
            if isinstance(t, Tensor) and t.device != self.device:
                raise ValueError(f"loader: batch is on {t.device} but the model is on {self.device}")

    def attach(self, loader: object) -> None:
        """Stream ``loader`` from the saved position (0 unless :meth:`resume_at` set one)."""
        stream = BatchStream(loader, self.check)
        stream.skip(self._resume)
        self.stream, self._resume = stream, 0

    def require(self, what: str) -> BatchStream:
        """The attached stream; RuntimeError naming ``what`` (e.g. "prune") when there is none."""
        if self.stream is None:
            raise RuntimeError(f"{self.owner}.{what}: call fit(loader) first")
        return self.stream

    @property
    def position(self) -> int:
        """Batches handed out so far (the saved position before data is attached)."""
        return self.stream.position if self.stream is not None else self._resume

    def resume_at(self, position: int) -> None:
        """Continue at ``position``: now, when data is attached (restarting it), else at the next attach."""
        self._resume = position
        if self.stream is not None:
            self.attach(self.stream.loader)


@dataclass
class Context:
    """A pruner's shared state, as a method sees it.

    Attributes:
        owner: the pruner's class name, for errors.
        model: the pruned network.
        views: its prunable layers, in order (a layer's index is its position here).
        pattern: the sparsity pattern.
        allocation: "global" or "uniform".
        masks: alive masks and hooks.
        mode: where the work runs (local, replicated, sharded).
        data: the calibration data.
        backend: the preferred ops backend (None: automatic).
        progress: show progress bars.
        block: the block's name when this is one block of a block-sequential prune (its data: the block's inputs
            captured from the model's own forward), else None.
    """

    owner: str
    model: nn.Module
    views: list[LayerView]
    pattern: Pattern | NMPattern
    allocation: str
    masks: MaskState
    mode: ExecutionMode
    data: DataFeed
    backend: str | None = None
    progress: bool = False
    block: str | None = None

    @property
    def device(self) -> torch.device:
        return self.views[0].weight.device

    @property
    def dtype(self) -> torch.dtype:
        """The dtype methods compute in: the weights' if float32/float64, else float32."""
        dtype = self.views[0].weight.dtype
        return dtype if dtype in (torch.float32, torch.float64) else torch.float32

    def backend_for(self, op: str) -> str | None:
        """The backend to request for ``op`` (None: automatic), see :func:`fls_kernels.backends.preferred`."""
        return backends.preferred(self.backend, op)
