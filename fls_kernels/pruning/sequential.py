"""Block-sequential pruning (``sequential="blocks"``): a model's repeated blocks pruned one after another, each on
the inputs that the already-pruned blocks before it produce, with only one block's method state resident.

For each block b, in model order:

1. its inputs on the calibration batches are captured — from the pruned block b − 1's outputs when the blocks
   chain (block b's hidden-state input is block b − 1's output and its other inputs are block 0's, checked on
   the first batch), else by a forward of the model stopped at block b — kept in the model's dtype, on the
   device or offloaded to the CPU;
2. a fresh method is bound to the block alone (:class:`~fls_kernels.layers.blocks.BlockRunner`): curvature
   methods take their Fisher from a Gaussian around the block's output y, F = E[Jᵀ J] with J = ∂y/∂θ over the
   block's parameters (padding tokens weighted 0) — the Fisher of the block's output distortion; layerwise
   methods measure their inputs through the block only, all the block's layers in one pass (``true_sequential``:
   group after group);
3. the method is fitted (``fit``'s ``steps`` per block), the block pruned to its target in the requested
   sub-steps, and its outputs recomputed as block b + 1's inputs; the method is then dropped.

Targets: a number is reached per layer (uniform) or per block (global: one ranking over the block's layers); a
dict per layer; N:M in every group. The whole prune is still all-or-nothing.
"""

from __future__ import annotations

import inspect
import logging
from collections.abc import Callable, Iterator, Mapping, Sequence

import torch
from torch import Tensor, nn

from fls_kernels.curvature.inputs import token_weights
from fls_kernels.data import eval_mode, split_batch
from fls_kernels.layers.attention import unfused
from fls_kernels.layers.blocks import TOKEN_WEIGHTS, Block, BlockRunner, block_output, find_blocks
from fls_kernels.layers.views import LayerView
from fls_kernels.pruning import execution
from fls_kernels.pruning.checks import flag
from fls_kernels.pruning.context import Context, DataFeed
from fls_kernels.pruning.maskstate import MaskState
from fls_kernels.pruning.method import Method
from fls_kernels.pruning.step import prune_substep
from fls_kernels.pruning.targets import parse

log = logging.getLogger("fls_kernels.prune")

SEQUENTIAL = ("blocks",)


class _Stop(Exception):
    """Raised by the pre-hook once a block's inputs are captured: the rest of the forward is not needed."""


class Captured(Sequence[dict]):
    """A block's captured inputs, one mapping of its forward's named arguments per calibration batch (plus
    :data:`TOKEN_WEIGHTS`), held where they were stored (the CPU when offloaded) and handed out on ``device`` — a
    re-iterable loader."""

    def __init__(self, batches: list[dict], device: torch.device) -> None:
        self.batches = batches
        self.device = device

    def __len__(self) -> int:
        return len(self.batches)

    def __getitem__(self, index: int) -> dict:  # type: ignore[override]
        return {k: _to(v, self.device) for k, v in self.batches[index].items()}

    def __iter__(self) -> Iterator[dict]:
        return (self[i] for i in range(len(self)))

    def nbytes(self) -> int:
        return sum(_nbytes(v) for b in self.batches for v in b.values())


def _to(value: object, device: torch.device) -> object:
    if isinstance(value, Tensor):
        return value.to(device, non_blocking=True)
    if isinstance(value, tuple):
        return tuple(_to(v, device) for v in value)
    return value


def _nbytes(value: object) -> int:
    if isinstance(value, Tensor):
        return value.numel() * value.element_size()
    if isinstance(value, tuple):
        return sum(_nbytes(v) for v in value)
    return 0


def _same(a: object, b: object) -> bool:
    """Whether two inputs of different blocks are the same value (the same tensor object, or equal otherwise)."""
    if isinstance(a, Tensor) or isinstance(b, Tensor):
        return a is b
    if isinstance(a, tuple) and isinstance(b, tuple):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    if a is b:
        return True
    if type(a) is not type(b) or not isinstance(a, (bool, int, float, str, type(None))):
        return False  # other objects (a cache, a module): the same one only
    return a == b


class BlockSequential:
    """The block-sequential executor of one pruner (see the module docstring).

    Args:
        model: the pruned network.
        views: the pruner's layers.
        method_class: the method run on each block.
        options: the method's options as the user gave them (by name).
        blocks: regex of the blocks' module paths (None: found automatically, :func:`find_blocks`).
        offload: keep captured inputs on the CPU between uses.

    The model's own batches are read by the user's ``inputs=`` option (default :func:`split_batch`), its
    ``validation=`` batches captured like the calibration ones; each block's method reads the captured inputs.
    """

    def __init__(
        self,
        model: nn.Module,
        views: list[LayerView],
        method_class: type[Method],
        options: Mapping[str, object],
        *,
        blocks: str | None = None,
        offload: bool = False,
    ) -> None:
        for key, value in method_class.block_options.items():
            if key in options and options[key] is not value and options[key] != value:
                raise ValueError(
                    f"{key}: with sequential='blocks' the method reads {key}={value!r} on each block (the Fisher of "
                    f"the block's output distortion); got {options[key]!r}"
                )
        flag("offload", offload)
        self.model = model
        self.blocks: list[Block] = find_blocks(model, views, blocks)
        self.method_class = method_class
        self.options = {k: v for k, v in options.items() if k not in ("inputs", "validation")}
        self.options.update(method_class.block_options)
        #: held-out model inputs (the method's ``validation=``), captured and propagated block by block like the
        #: calibration batches and handed to each block's method as its own held-out batches
        self.validation = options.get("validation")
        self.offload = offload
        self.inputs: Callable[[object], tuple[tuple, dict]] = options.get("inputs") or split_batch
        self.steps = 0
        #: high-water mark per kind of the bytes held while pruning (method state of one block, captured inputs)
        self.peak: dict[str, int] = {}
        #: per block of the last prune: its layers, the bytes its method held and, for a method validating its fit on
        #: held-out batches, the (step, held-out aux loss) of every validation
        self.report: dict[str, dict] = {}

    def check(self, like: Context) -> None:
        """Bind a method to the first block, as a prune will (its option and pattern checks), and drop it."""
        self._method(self._context(like, self.blocks[0], None), self.validation)  # the model's batches stand in

    def _method(self, ctx: Context, validation: Sequence | None = None) -> Method:
        extra = {"validation": list(validation)} if validation is not None else {}
        method = self.method_class(**self.options, **extra)
        method.bind(ctx)
        return method

    def _context(self, like: Context, block: Block, data: Captured | None) -> Context:
        views = [like.views[i] for i in block.layers]
        shared = {v.name: like.masks[v.name] for v in views}
        runner = BlockRunner(block.name, block.module)
        masks = MaskState(runner, views, like.pattern, masks=shared)
        mode = execution.create(None, views, like.device, shardable=False, who=like.owner)
        feed = DataFeed(like.owner, like.device)
        if data is not None:
            feed.attach(data)
        return Context(
            like.owner, runner, views, like.pattern, like.allocation, masks, mode, feed, like.backend, block=block.name
        )

    # ------------------------------------------------------------------------------------------ the run
    def run(self, like: Context, sparsity: object, substeps: int) -> None:
        """Prune every block in turn to its part of ``sparsity`` in ``substeps`` sub-steps (see the module
        docstring); ``like`` is the pruner's context, with its calibration data attached unless the method needs
        none."""
        self.peak, self.report = {}, {}
        needs_data = self.method_class.needs_data
        loader = like.data.require("prune").loader if needs_data else None
        sets = [loader] + ([self.validation] if needs_data and self.validation is not None else [])
        bar = _progress(like.progress, len(self.blocks))
        with _no_cache(self.model), eval_mode(self.model), unfused(self.model, math_sdpa=False):
            key = self._chain(loader) if needs_data and len(self.blocks) > 1 else None
            captured: list[Captured] = []  # the calibration batches' inputs, then the held-out ones'
            last: list[Tensor] | None = None  # the held-out inputs' last-block outputs before this prune, if read
            for b, block in enumerate(self.blocks):
                if needs_data and (b == 0 or key is None):
                    captured = [self._capture(batches, block, like.device) for batches in sets]
                ctx = self._context(like, block, captured[0] if captured else None)
                method = self._method(ctx, captured[1] if len(captured) > 1 else None)
                at = method.trial_at if len(captured) > 1 else None
                if at == "last" and len(self.blocks) == 1:
                    at = "block"  # the only block is the last
                if at == "last" and b == 0:  # the model's outputs before anything is pruned
                    if key is None:
                        raise ValueError(
                            "validate_by: the last block's output error carries each block's outputs through the "
                            "blocks after it, which do not chain here (each block's input the previous block's "
                            "output); validate by the block's own output instead"
                        )
                    last = self._last(self._carried(captured[1], 0, key))
                if at is not None:
                    method.trial = self._trial(
                        ctx, method, _part(sparsity, ctx.views), substeps, captured[1], at, last, b, key
                    )
                method.fit(self.steps)
                target = parse(_part(sparsity, ctx.views), ctx.masks, ctx.allocation)
                for step, increment in target.substeps(ctx.masks, substeps):
                    method.before_substep(step)
                    prune_substep(ctx, method, increment)
                memory = method.memory()
                self._record(memory, captured[0].nbytes() if captured else 0)
                fitter = getattr(method, "fitter", None)
                self.report[block.name] = dict(
                    layers=[v.name for v in ctx.views],
                    memory=memory,
                    validation=list(fitter.validation) if fitter is not None else [],
                )
                del method, ctx, fitter  # only one block's state is ever held
                if key is not None and b + 1 < len(self.blocks):
                    captured = [self._propagate(c, block, key) for c in captured]
                if bar is not None:
                    bar.update(1)
                log.info("block %s pruned (%d layers)", block.name, len(block.layers))
        if bar is not None:
            bar.close()

    def _trial(
        self,
        ctx: Context,
        method: Method,
        sparsity: object,
        substeps: int,
        held: Captured,
        at: str,
        last: list[Tensor] | None,
        index: int,
        key: str | None,
    ) -> Callable[[], float]:
        """Block ``index``'s :attr:`~Method.trial`: prune it to ``sparsity`` in ``substeps`` sub-steps with
        ``method`` as it is (no :meth:`~Method.before_substep` between them), measure the relative error on the
        held-out inputs ``held``, and put the block's weights and masks back. ``at="block"``: of the block's outputs
        against its outputs now (before this prune); ``"last"`` (blocks that chain through ``key``): of the last
        block's outputs, the pruned block's carried through the blocks after it, against ``last``, the model's
        before this prune."""
        if at == "block":
            with torch.no_grad():
                reference = [self._store(ctx.model(**inputs)) for inputs in held]

        def trial() -> float:
            snapshot = ctx.masks.snapshot()
            try:
                target = parse(sparsity, ctx.masks, ctx.allocation)
                for _, increment in target.substeps(ctx.masks, substeps):
                    prune_substep(ctx, method, increment)
                if at == "block":
                    return output_error(ctx.model, held, reference)
                return relative_error(self._last(self._carried(held, index, key)), last)
            finally:
                ctx.masks.restore(snapshot)

        return trial

    def _carried(self, held: Captured, start: int, key: str) -> Captured:
        """``held``, block ``start``'s inputs, carried to the last block's inputs through the blocks from ``start``
        on as they are now (:meth:`_propagate`)."""
        for block in self.blocks[start:-1]:
            held = self._propagate(held, block, key)
        return held

    @torch.no_grad()
    def _last(self, held: Captured) -> list[Tensor]:
        """The last block's outputs on its inputs ``held``, padding weighted 0."""
        runner = BlockRunner(self.blocks[-1].name, self.blocks[-1].module)
        return [self._store(runner(**inputs)) for inputs in held]

    def _store(self, value: object) -> object:
        return _to(value, torch.device("cpu")) if self.offload else value

    @torch.no_grad()
    def _capture(self, loader: object, block: Block, device: torch.device) -> Captured:
        """``block``'s inputs on one pass over ``loader``, each by a forward of the model stopped at the block."""
        seen: list[dict] = []
        signature = inspect.signature(block.module.forward)

        def hook(module: nn.Module, args: tuple, kwargs: dict) -> None:
            seen.append(_named(signature, args, kwargs, block.name))
            raise _Stop

        handle = block.module.register_forward_pre_hook(hook, with_kwargs=True)
        batches = []
        try:
            for batch in loader:
                args, kwargs = self.inputs(batch)
                try:
                    self.model(*args, **kwargs)
                except _Stop:
                    pass
                if not seen:
                    raise RuntimeError(f"blocks: block {block.name!r} was not called by the model's forward")
                named = seen.pop()
                first = next((v for v in named.values() if isinstance(v, Tensor)), None)
                named[TOKEN_WEIGHTS] = token_weights(batch, first) if first is not None else None
                batches.append({k: self._store(v) for k, v in named.items()})
        finally:
            handle.remove()
        if not batches:
            raise ValueError("loader: no calibration batches")
        return Captured(batches, device)

    @torch.no_grad()
    def _chain(self, loader: object) -> str | None:
        """The name of the input through which each block reads the previous block's output, when on the first
        batch every block's other inputs are the first block's (then inputs are propagated block to block); None
        otherwise (each block's inputs are then captured by a forward of the model)."""
        named: list[dict] = []
        outputs: list[Tensor] = []
        handles = []
        for block in self.blocks:
            signature = inspect.signature(block.module.forward)
            handles.append(
                block.module.register_forward_pre_hook(
                    lambda m, a, k, s=signature, n=block.name: named.append(_named(s, a, k, n)), with_kwargs=True
                )
            )
            handles.append(block.module.register_forward_hook(lambda m, a, out: outputs.append(block_output(out))))
        try:
            args, kwargs = self.inputs(next(iter(loader)))
            self.model(*args, **kwargs)
        finally:
            for h in handles:
                h.remove()
        if len(named) != len(self.blocks) or len(outputs) != len(self.blocks):
            log.info("blocks: not called once each per forward; capturing each block's inputs from the model")
            return None
        keys = [k for k, v in named[1].items() if v is outputs[0]]
        key = keys[0] if len(keys) == 1 else None
        for b in range(1, len(self.blocks)):
            if key is None or named[b].keys() != named[0].keys() or named[b][key] is not outputs[b - 1]:
                key = None
                break
            if not all(_same(v, named[0][k]) for k, v in named[b].items() if k != key):
                key = None
                break
        if key is None:
            log.info("blocks: the blocks do not chain; capturing each block's inputs from the model")
        return key

    @torch.no_grad()
    def _propagate(self, captured: Captured, block: Block, key: str) -> Captured:
        """The next block's inputs: ``captured`` with ``key`` replaced by the (pruned) block's output."""
        runner = block.module
        batches = []
        for index in range(len(captured)):
            inputs = captured[index]
            inputs.pop(TOKEN_WEIGHTS)
            out = block_output(runner(**inputs))
            batches.append({**captured.batches[index], key: self._store(out)})
        propagated = Captured(batches, captured.device)
        self._record({}, captured.nbytes() + propagated.nbytes())  # both sets are held until this returns
        return propagated

    def _record(self, usage: Mapping[str, int], inputs: int) -> None:
        """Raise :attr:`peak` to ``usage`` (a method's :meth:`~Method.memory`) and ``inputs``, the bytes of the
        captured inputs held."""
        usage = {**usage, "inputs": inputs}
        for kind, value in usage.items():
            self.peak[kind] = max(self.peak.get(kind, 0), int(value))


@torch.no_grad()
def output_error(runner: nn.Module, held: Sequence[dict], reference: Sequence[Tensor]) -> float:
    """Σ_b ‖runner(**held[b]) − reference[b]‖² / Σ_b ‖reference[b]‖², in float64 (padding weighted 0 by the
    runner's token weights)."""
    return relative_error([runner(**inputs) for inputs in held], reference)


def relative_error(outputs: Sequence[Tensor], reference: Sequence[Tensor]) -> float:
    """Σ_b ‖outputs[b] − reference[b]‖² / Σ_b ‖reference[b]‖², in float64."""
    num = torch.zeros((), dtype=torch.float64)
    den = torch.zeros((), dtype=torch.float64)
    for out, ref in zip(outputs, reference, strict=True):
        out = out.to(torch.float64)
        ref = ref.to(out.device, torch.float64)
        num += (out - ref).square().sum().cpu()
        den += ref.square().sum().cpu()
    return float(num / den) if den > 0 else float(num)


def _named(signature: inspect.Signature, args: tuple, kwargs: dict, name: str) -> dict:
    """A block call's arguments by name (``**kwargs`` merged); ValueError naming ``blocks`` for ``*args``."""
    bound = signature.bind(*args, **kwargs).arguments
    named: dict = {}
    for key, value in bound.items():
        kind = signature.parameters[key].kind
        if kind is inspect.Parameter.VAR_POSITIONAL:
            if value:
                raise ValueError(f"blocks: block {name!r} is called with extra positional arguments (*{key})")
        elif kind is inspect.Parameter.VAR_KEYWORD:
            named.update(value)
        else:
            named[key] = value
    return named


def _part(sparsity: object, views: list[LayerView]) -> object:
    """A block's part of the requested sparsity: a dict restricted to the block's layers, else as given."""
    if isinstance(sparsity, Mapping):
        names = {v.name for v in views}
        return {k: v for k, v in sparsity.items() if k in names}
    return sparsity


class _no_cache:
    """A transformers model's ``config.use_cache`` off for the duration (no key/value cache grows as blocks run
    again on their inputs)."""

    def __init__(self, model: nn.Module) -> None:
        self.config = getattr(model, "config", None)

    def __enter__(self) -> None:
        self.saved = getattr(self.config, "use_cache", None)
        if self.saved:
            self.config.use_cache = False

    def __exit__(self, *exc: object) -> None:
        if self.saved:
            self.config.use_cache = True


def _progress(show: bool, total: int):
    if not show:
        return None
    from tqdm.auto import tqdm

    return tqdm(total=total, desc="blocks")
