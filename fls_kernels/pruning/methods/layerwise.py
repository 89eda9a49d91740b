"""The shared part of the layerwise methods (SparseGPT, Wanda): calibration batches held for the prune, and each
layer's input moments measured on the model as pruned so far.

Layer i is measured after layers < i are pruned and committed (the prune step calls :meth:`Method.prune_layer`
in model order), so it sees the inputs the pruned model produces. Block by block (``sequential="blocks"``) a
block's layers are all measured in one pass of the block on its inputs before any of them is pruned, as the
methods' authors run them (``true_sequential=True``: group after group within the block, as in whole-model mode).
Each layer is pruned to its own budget:
allocation is uniform (or a per-layer dict), since these methods' losses — layer-output reconstruction — are
not comparable across layers.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from fls_kernels.curvature.inputs import InputMoments, all_input_moments, call_counts, input_moments
from fls_kernels.data import check_finite, loader_length, split_batch
from fls_kernels.distributed.comm import attempt
from fls_kernels.pruning.checks import flag, integer
from fls_kernels.pruning.context import Context
from fls_kernels.pruning.method import Method
from fls_kernels.pruning.patterns import NMPattern


class Layerwise(Method):
    """Calibration batches and per-layer input moments.

    Args:
        calib_batches: batches of the loader held as the calibration set (None: one pass, ``len(loader)``).
        inputs: batch → (args, kwargs) for the model (default: tensor, first element, or mapping).
        true_sequential: block by block, measure a block's layers group after group, each on the outputs of the
            groups pruned before it (the authors' ``--true-sequential``), instead of all in one pass of the block
            (their default). Whole-model mode always measures layer after layer.
    """

    allocations = ("uniform",)
    layerwise = True

    def __init__(
        self,
        *,
        calib_batches: int | None = None,
        inputs: Callable[[object], tuple[tuple, dict]] = split_batch,
        true_sequential: bool = False,
    ) -> None:
        self.calib_batches = integer("calib_batches", calib_batches, 1) if calib_batches is not None else None
        self.true_sequential = flag("true_sequential", true_sequential)
        self.inputs = inputs
        self.batches: list[object] | None = None
        self._measured: dict[int, InputMoments] = {}  # later layers measured in an earlier layer's pass
        self._calls: list[int] = []  # forward calls per layer (> 1: re-used)

    def bind(self, ctx: Context) -> None:
        if not isinstance(ctx.pattern, NMPattern) and ctx.pattern.size != 1:
            raise ValueError(f"pattern: {ctx.owner} prunes 'unstructured' or N:M patterns, got {ctx.pattern}")
        super().bind(ctx)

    @property
    def fitted(self) -> bool:
        return self.batches is not None

    def fit(self, steps: int) -> list[float]:
        """Hold ``calib_batches`` batches of the attached data (the whole loader by default), each checked by one
        forward of the model, so a bad batch is named now rather than met by the prune (a block's captured
        inputs, made by the model's own forward: the first one only).

        Raises:
            ValueError: ``calib_batches`` above the loader's length (batches would repeat), a batch with NaN/Inf,
                or one the model's forward fails on (naming its index).
        """
        stream = self.ctx.data.require("fit")
        held = loader_length(stream.loader)
        count = self.calib_batches
        if count is None:
            if held is None:
                raise ValueError("calib_batches: the loader has no len(); pass the number of batches")
            count = held
        elif held is not None and count > held:
            raise ValueError(
                f"calib_batches: {count} batches asked for, but the loader holds {held} (batches would repeat and "
                f"count twice); pass calib_batches ≤ {held}, or None for one pass"
            )
        batches: list[object] = []
        first: list[int] = []
        comm = self.ctx.mode.comm
        with attempt(comm):
            for _ in range(count):
                batches.append(next(stream))
                index = stream.last_index
                check_finite(batches[-1], index)
                if first and self.ctx.block is not None:
                    continue  # a block's captured inputs came from the model's own forward: one check will do
                try:
                    calls = call_counts(self.ctx.model, self.ctx.views, batches[-1], self.inputs)
                except Exception as exc:
                    line = str(exc).splitlines()[0] if str(exc) else ""
                    raise ValueError(
                        f"loader: the model's forward fails on batch {index} ({type(exc).__name__}: {line}); every "
                        "held calibration batch must be a valid model input"
                    ) from exc
                first = first or calls
        if comm is not None:
            comm.check()
        self.batches, self._calls = batches, first
        self._measured.clear()
        return []

    def before_substep(self, substep: int) -> None:
        self._measured.clear()

    def moments(self, index: int, diagonal: bool) -> InputMoments:
        """Σ a aᵀ (or Σ a ⊙ a) of layer ``index``'s inputs over the calibration batches (summed over ranks); the
        layers after it fed the same input tensor (block by block: every later layer of the block, unless
        ``true_sequential``) are measured in the same pass and kept for their turn."""
        if index in self._measured:
            return self._measured.pop(index)
        views = self.ctx.views[index:]
        if self.ctx.block is not None and not self.true_sequential:
            group = all_input_moments(self.ctx.model, views, self.batches or [], diagonal=diagonal, inputs=self.inputs)
        else:
            reused = index < len(self._calls) and self._calls[index] > 1
            group = input_moments(
                self.ctx.model, views, self.batches or [], diagonal=diagonal, inputs=self.inputs, reused=reused
            )
        comm = self.ctx.mode.comm
        if comm is not None:
            size = torch.tensor([len(group)], device=group[0].total.device)
            comm.all_reduce_([size], op="min")  # every rank keeps the same layers
            group = group[: int(size)]
            counts = group[0].total.new_tensor([[m.samples, m.tokens] for m in group])
            comm.all_reduce_([m.total for m in group] + [counts])
            for m, (samples, tokens) in zip(group, counts.tolist()):
                m.samples, m.tokens = int(samples), int(tokens)
        self._measured.update({index + i: m for i, m in enumerate(group[1:], 1)})
        return group[0]
