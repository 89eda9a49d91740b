"""The pruner: one life cycle — construct, ``fit``, ``prune`` (one-shot) or ``step`` (gradual), ``finalize``,
checkpoints — for FishLeg and every baseline, over one method (:mod:`.method`). A prune step either completes
or leaves the model (and the pruner) exactly as it was.
"""

from __future__ import annotations

import copy
import dataclasses
import inspect
import logging
import math
from collections.abc import Mapping, Sequence
from typing import ClassVar

import torch
from torch import nn

from fls_kernels import backends
from fls_kernels.layers.selection import Unpruned, select_layers, unpruned, unwrap
from fls_kernels.layers.views import SUPPORTED_LAYERS, LayerView
from fls_kernels.pruning import checkpoint, checks, execution
from fls_kernels.pruning.context import Context, DataFeed
from fls_kernels.pruning.maskstate import MaskState
from fls_kernels.pruning.method import Method, accepts_any_option, has_option, method_parameters
from fls_kernels.pruning.patterns import NMPattern, parse_pattern
from fls_kernels.pruning.schedules import Schedule, as_schedule
from fls_kernels.pruning.sequential import SEQUENTIAL, BlockSequential
from fls_kernels.pruning.step import prune_substep
from fls_kernels.pruning.targets import ALLOCATIONS, parse

log = logging.getLogger("fls_kernels.prune")
skips = logging.getLogger("fls_kernels.pruning")
#: why a layer found out of the likelihood's reach is not pruned (see :meth:`Pruner.fit`)
UNREACHED = "does not reach the tensor the likelihood reads (no curvature)"


class Pruner:
    """Layers, masks, patterns, schedules, the prune step and checkpoints around one :class:`Method`.

    A subclass names its method in ``method_class``; positional arguments after ``model`` and keywords not
    listed here are the method's own options.

    Args:
        model: the network to prune in place (a DDP/FSDP wrapper: its module).
        pattern: "unstructured" (default), "N:M" (e.g. "2:4", along the inputs) or "blockRxC" (e.g. "block4x4").
        schedule: for gradual pruning with :meth:`step`: a :class:`~fls_kernels.pruning.schedules.Schedule`
            (e.g. ``CubicSchedule(0.5, 0.95, start=0, end=3000, every=100)``) or any callable step → sparsity.
        substeps: sub-steps of each scheduled pruning step.
        layer_types: module types to prune (subset of :data:`~fls_kernels.layers.views.SUPPORTED_LAYERS`: Linear,
            GPT-2 Conv1D, Conv1d, Conv2d, ConvTranspose1d, ConvTranspose2d, MultiheadAttention's in-projection).
        include: regex the qualified layer name must fully match (None: every layer of those types).
        ignore: regexes of layer names to leave dense.
        allocation: "global" (one ranking over all layers) or "uniform" (each layer to the same sparsity);
            None: the method's default — global, except for the layerwise SparseGPT and Wanda, which only
            prune uniformly. A per-layer dict can also be passed to :meth:`prune`.
        include_bias: fold biases into the layer matrices (they are never pruned, but may be updated).
        backend: preferred ops backend (default: automatic); ops it does not implement (e.g. Triton has no
            ``select_smallest``) run on the automatic choice.
        progress: show tqdm progress bars.
        distributed: prune on every rank of a ``torch.distributed`` group, each reading its own batches:
            True / "replicated" (data-parallel), "sharded" (per-layer owners; FLS and K-FAC-OBS) or a
            :class:`~fls_kernels.distributed.Distributed`. Every rank ends each step with the same masks and
            weights; a step failing on any rank raises on every rank with no model changed.
        sequential: None (whole model, default) or "blocks": the model's repeated blocks pruned one after another,
            each on the inputs of the already-pruned blocks before it, with the Fisher of its output distortion
            and one block's method state resident (:mod:`~fls_kernels.pruning.sequential`); ``fit`` then attaches
            the data and sets the aux steps per block, and :meth:`prune` fits and prunes block by block. One-shot
            (no ``schedule``), one process.
        blocks: with ``sequential="blocks"``, a regex of the blocks' module paths (None: the children of the
            model's repeated ``nn.ModuleList`` s, e.g. transformers' decoder layers).
        offload: with ``sequential="blocks"``, keep the captured block inputs on the CPU between uses.
    """

    #: the method this pruner runs (set by each subclass)
    method_class: ClassVar[type[Method]] = Method
    #: bump when the state_dict layout changes
    STATE_VERSION = 2

    def __init__(
        self,
        model: nn.Module,
        *method_args: object,
        pattern: str = "unstructured",
        schedule: Schedule | object = None,
        substeps: int = 1,
        layer_types: Sequence[type[nn.Module]] = SUPPORTED_LAYERS,
        include: str | None = None,
        ignore: Sequence[str] = (),
        allocation: str | None = None,
        include_bias: bool = True,
        backend: str | None = None,
        progress: bool = False,
        distributed: object = None,
        sequential: str | None = None,
        blocks: str | None = None,
        offload: bool = False,
        **method_options: object,
    ) -> None:
        _check_options(type(self), method_args, method_options)
        method = self.method_class(*method_args, **method_options)  # the method's own checks come first
        _check_sequential(sequential, blocks, offload, schedule, distributed)
        model = unwrap(model)
        allocation = method.allocations[0] if allocation is None else allocation
        checks.choice("allocation", allocation, ALLOCATIONS)
        if allocation not in method.allocations:
            raise ValueError(f"allocation: {type(self).__name__} supports {method.allocations}, got {allocation!r}")
        self.pattern = parse_pattern(pattern)
        self.schedule = as_schedule(schedule)
        self.substeps = checks.integer("substeps", substeps, 1)
        if backend is not None:
            backends.get_backend(backend)  # ValueError naming `backend` when unknown
        views = select_layers(model, layer_types=layer_types, include=include, ignore=ignore, include_bias=include_bias)
        self.pattern.check(views)
        name = type(self).__name__
        left = unpruned(model, views, layer_types=layer_types, include=include, ignore=ignore)
        self.model, self.method, self._distributed = model, method, distributed
        self._sequential: BlockSequential | None = None
        if sequential is not None:
            positional, _ = method_parameters(self.method_class)
            options = {**dict(zip((p.name for p in positional), method_args)), **method_options}
            self._sequential = BlockSequential(model, views, self.method_class, options, blocks=blocks, offload=offload)
        self._bind(views, Context(name, model, [], self.pattern, allocation, None, None, None, backend, progress))
        if self._sequential is not None:
            self._sequential.check(self.ctx)
        self.masks.attach()  # last: a bad argument above leaves the model without hooks
        self.unpruned: list[Unpruned] = left
        self._left_out: list[str] = []  # layers the first fit found out of the method's reach
        self._probed = False
        kept = [f"{u.name} ({u.reason.split(':')[0]})" for u in left if u.by_default]
        if kept:
            log.info(
                "%s keeps the model's embeddings and output head dense: %s (include= a pattern naming the head prunes "
                "it)",
                name,
                ", ".join(kept),
            )
        unsupported = [u for u in left if not u.explicit]
        if unsupported:
            names = ", ".join(f"{u.name} ({u.reason.split(':')[0]})" for u in unsupported[:8])
            more = f" and {len(unsupported) - 8} more" if len(unsupported) > 8 else ""
            skips.warning(
                "%s leaves %d weight tensor(s) unpruned, of types it cannot prune: %s%s; exclude them with "
                "ignore= (or include=) to silence this, see report()",
                name,
                len(unsupported),
                names,
                more,
            )
        self._finalized = False
        self._step = 0  # training steps seen by step()
        self._bar = None

    def _bind(self, views: list[LayerView], like: Context) -> None:
        """Set :attr:`ctx` to ``like`` over ``views`` (a new execution mode and masks; the data of ``like`` or a
        new feed) and bind the method to it; the new masks' hooks are not attached yet."""
        device = views[0].weight.device
        mode = execution.create(self._distributed, views, device, shardable=self.method.shardable, who=like.owner)
        masks = MaskState(self.model, views, self.pattern)
        data = like.data if like.data is not None else DataFeed(like.owner, device)
        ctx = dataclasses.replace(like, views=views, masks=masks, mode=mode, data=data)
        if self._sequential is None:  # block-sequential: a method per block, bound as the prune reaches it
            self.method.bind(ctx)
        self.ctx, self.masks = ctx, masks

    def _rebuild(self, views: list[LayerView]) -> None:
        """Re-bind over ``views`` (nothing fitted or pruned yet), moving the mask hooks to the new masks."""
        old = self.masks
        self._bind(views, self.ctx)
        old.detach()
        self.masks.attach()

    def _leave_out(self, names: Sequence[str], reason: str) -> None:
        """Rebuild the pruner without the layers ``names`` (before anything was fitted or pruned), listing them
        in :attr:`unpruned` with ``reason``."""
        unknown = set(names) - set(self.layer_names)
        if unknown:
            raise ValueError(f"state_dict: left-out layers {sorted(unknown)} are not layers of this pruner")
        gone = [v for v in self.views if v.name in names]
        self._rebuild([v for v in self.views if v.name not in names])
        self._left_out += [v.name for v in gone]
        self.unpruned += [
            Unpruned(next(iter(v.parameters())), tuple(v.weight.shape), reason, explicit=False) for v in gone
        ]

    def _probe(self) -> None:
        """Before the first fit: leave out the layers the method cannot measure on the first batch (their weights
        do not reach the output its likelihood reads), every rank agreeing; ValueError if that is all of them."""
        self._probed = True
        dead = self.method.unreached(self.ctx.data.stream.first)
        comm = self.ctx.mode.comm
        if comm is not None:
            flags = torch.zeros(len(self.views), dtype=torch.float64, device=comm.device)
            flags[dead] = 1
            comm.all_reduce_([flags], "max")
            dead = flags.nonzero().flatten().tolist()
        if not dead:
            return
        names = [self.views[i].name for i in dead]
        if len(dead) == len(self.views):
            raise ValueError(
                f"model: no prunable layer reaches the tensor the likelihood reads ({', '.join(names)}); pass "
                "output= to read the right one"
            )
        self._leave_out(names, UNREACHED)
        skips.info(
            "%s leaves out %d layer(s) whose weights do not reach the tensor the likelihood reads: %s",
            self.ctx.owner,
            len(names),
            ", ".join(names),
        )

    def __init_subclass__(cls, **kwargs: object) -> None:
        super().__init_subclass__(**kwargs)
        # cls(model, <the method's options>, <the pruner's keywords>), for help() and IDEs
        own = list(inspect.signature(Pruner.__init__).parameters.values())
        positional, keywords = method_parameters(cls.method_class)
        cls.__signature__ = inspect.Signature([own[1], *positional, *keywords, *own[3:-1]])

    # ------------------------------------------------------------------------------------------ reporting
    @property
    def views(self) -> list[LayerView]:
        """The prunable layers, in order."""
        return self.ctx.views

    @property
    def sequential(self) -> str | None:
        """The execution: None (whole model) or "blocks" (block by block, the aux steps of ``fit`` per block)."""
        return None if self._sequential is None else "blocks"

    @property
    def device(self) -> torch.device:
        return self.ctx.device

    @property
    def layer_names(self) -> list[str]:
        return [v.name for v in self.views]

    @property
    def fitted(self) -> bool:
        """Whether :meth:`prune` can run: the method has what it needs and, if it reads data, data is attached
        (a pruner restored by :meth:`load_state_dict` re-attaches it with ``fit(loader, 0)``)."""
        return self._missing() is None

    def _missing(self) -> str | None:
        """What :meth:`prune` lacks, as the fix to apply (None: nothing)."""
        if self._sequential is not None:
            attached = not self.method.needs_data or self.ctx.data.stream is not None
            return None if attached else "call fit(loader) first"
        if not self.method.fitted:
            return "call fit(loader) first"
        if self.method.needs_data and self.ctx.data.stream is None:
            return (
                "no calibration data is attached (a checkpoint holds the method's state, not the batches): "
                "re-attach it with fit(loader, 0) after load_state_dict"
            )
        return None

    def num_prunable(self) -> int:
        """d: the number of prunable weights (biases excluded)."""
        return self.masks.num_prunable()

    def num_pruned(self) -> int:
        return self.masks.num_pruned()

    def sparsity(self) -> float:
        """Fraction of prunable weights removed."""
        return self.masks.sparsity()

    def layer_sparsity(self) -> dict[str, float]:
        """Layer name → fraction of its weights removed."""
        return self.masks.layer_sparsity()

    def model_sparsity(self) -> float:
        """Share of zeros among all the model's weights (every parameter of ≥ 2 dims, shared ones once) —
        pruned or not; :meth:`sparsity` counts the prunable weights only."""
        weights = [p.detach() for p in self.model.parameters() if p.dim() >= 2]  # parameters() yields each once
        total = sum(p.numel() for p in weights)
        return sum(int((p == 0).sum()) for p in weights) / total if total else 0.0

    def report(self) -> str:
        """A per-layer table: shape, weights, pruned, sparsity, and the total; then the weights left unpruned
        (with the reason) and the share of zeros over all weights."""
        lines = [self.masks.report()]
        if self.unpruned:
            lines.append("not pruned:")
            lines += [f"  {u.name:<30} {'x'.join(map(str, u.shape)):>14}  {u.reason}" for u in self.unpruned]
        lines.append(f"model sparsity (all weights): {self.model_sparsity():.4f}")
        return "\n".join(lines)

    def memory_usage(self) -> dict[str, int]:
        """Bytes held by the pruner beside the model: masks plus what the method keeps (λ, optimizer state…). With
        ``sequential="blocks"``, the method's high-water mark over the blocks of the last prune (one block's state
        at a time) and that of the captured block ``inputs`` ("total" adds them, a bound on the peak)."""
        usage = {"masks": sum(m.numel() * m.element_size() for m in self.masks.values())}
        usage.update(self.method.memory() if self._sequential is None else self._sequential.peak)
        usage["total"] = sum(usage.values())
        return usage

    def block_report(self) -> dict[str, dict]:
        """Block by block (``sequential="blocks"``), per block of the last prune in order: its ``layers``, the bytes
        its method held (``memory``) and, for FLS with ``validation=``, the (step, held-out aux loss) of every
        validation of its fit (``validation``: the held-out batches are captured block by block too). Whole-model
        mode: {}."""
        return copy.deepcopy(self._sequential.report) if self._sequential is not None else {}

    # ------------------------------------------------------------------------------------------ data
    def fit(self, loader: object = None, steps: int = 0) -> list[float]:
        """Attach the calibration ``loader`` and learn what the method needs (``steps`` of it, if iterative).

        After :meth:`load_state_dict`, calling ``fit(loader, 0)`` re-attaches the data at the saved position.

        Args:
            loader: re-iterable batches (tensors, (x, y, ...) tuples or mappings of model inputs); methods that
                need no data (magnitude) accept and ignore it.
            steps: iterations of the method's fit (aux steps for FLS); methods without one ignore it.

        Returns:
            the per-step losses of this call (empty for methods without an iterative fit).
        """
        self._check_alive()
        if not self.method.needs_data:
            return []
        steps = checks.integer("steps", steps)
        self.masks.check_finite("nothing was fitted")
        self.ctx.data.attach(loader)
        if self._sequential is not None:  # each block is fitted when the prune reaches it
            self._sequential.steps = steps
            return []
        first = not self.method.fitted
        if first and not self._probed:
            self._probe()
        try:
            return self.method.fit(steps)
        except BaseException:
            if first:
                self.method.forget()  # fitted only after a fit that succeeded
            raise

    # ------------------------------------------------------------------------------------------ pruning
    def prune(self, sparsity: float | Mapping[str, float] | None = None, substeps: int = 1) -> float:
        """Prune to ``sparsity`` in ``substeps`` rounds along a cubic path from the current sparsity.

        Unstructured, global: exactly ⌈s·d⌉ of the d prunable weights are zero afterwards (per layer for uniform
        allocation or a dict; in whole blocks for block patterns). N:M: ``sparsity`` is j/M (default N/M) and
        every group of M inputs then holds exactly j zeros. Pruned weights are +0 and never come back.

        Args:
            sparsity: target in [0, 1), or layer name → target (layers left out keep their sparsity).
            substeps: K ≥ 1 scoring/selection/update rounds.

        Returns:
            the overall sparsity reached.

        Raises:
            ValueError / TypeError: bad ``sparsity``/``substeps`` or NaN/Inf weights; the model is untouched.
        """
        self._check_alive()
        missing = self._missing()
        if missing is not None:
            raise RuntimeError(f"{self.ctx.owner}.prune: {missing}")
        substeps = checks.integer("substeps", substeps, 1)
        target = parse(sparsity, self.masks, self.ctx.allocation)
        self.masks.check_finite()
        snapshot = self._snapshot()
        try:
            if self._sequential is not None:
                self._sequential.run(self.ctx, sparsity, substeps)
                self.masks.apply()
                log.info("block-sequential: sparsity %.4f", self.sparsity())
                return self.sparsity()
            for step, increment in target.substeps(self.masks, substeps):
                self.method.before_substep(step)
                prune_substep(self.ctx, self.method, increment)
                log.info("sub-step %d/%d: sparsity %.4f", step + 1, substeps, self.sparsity())
        except BaseException:
            self._restore(snapshot)
            raise
        return self.sparsity()

    def step(self) -> float | None:
        """Advance the schedule by one training step (call it after ``optimizer.step()``).

        Prunes when the schedule's sparsity rises past the current one; otherwise lets the method keep
        refining its curvature. Returns the sparsity reached when it pruned, else None.
        """
        self._check_alive()
        if self.schedule is None:
            raise RuntimeError(f"{self.ctx.owner}.step: no schedule was given to the constructor")
        step, target = self._step, self.schedule(self._step)
        if isinstance(self.pattern, NMPattern):  # whole zeros per group, up to N
            target = min(math.floor(target * self.pattern.m + 1e-9), self.pattern.n) / self.pattern.m
        try:
            goal = parse(target, self.masks, self.ctx.allocation)
        except ValueError as exc:
            raise ValueError(f"schedule: at step {step}, {exc}") from None
        reached = None
        if goal.grows(self.masks):
            reached = self.prune(target, self.substeps)
            log.info("step %d: pruned to %.4f", step, reached)
        else:
            self.method.between_prunes()
        self._step += 1
        self._show_progress()
        return reached

    def _show_progress(self) -> None:
        if not self.ctx.progress:
            return
        if self._bar is None:
            from tqdm.auto import tqdm

            self._bar = tqdm(total=getattr(self.schedule, "end", None), initial=self._step - 1, desc="gradual")
        self._bar.update(1)
        self._bar.set_postfix(sparsity=f"{self.sparsity():.4f}")

    def _check_alive(self) -> None:
        if self._finalized:
            raise RuntimeError("this pruner was finalized; create a new one to prune again")

    def _method_state(self) -> dict:
        """The method's state (block-sequential: none outlives a prune)."""
        return copy.deepcopy(self.method.state_dict()) if self._sequential is None else {}

    def _snapshot(self) -> dict:
        return {"masks": self.masks.snapshot(), "method": self._method_state()}

    def _restore(self, snap: dict) -> None:
        self.masks.restore(snap["masks"])
        if self._sequential is None:
            self.method.load_state_dict(snap["method"])

    # ------------------------------------------------------------------------------------------ life cycle
    def finalize(self) -> nn.Module:
        """Bake exact zeros into the weights, remove every hook and return the model."""
        self.masks.apply()
        self.masks.detach()
        if self._bar is not None:
            self._bar.close()
        self._finalized = True
        return self.model

    def state_dict(self) -> dict:
        """Masks, schedule position, data position and method state (λ, optimizer state, RNG…) — the model's
        own weights are not included (save ``model.state_dict()`` beside it)."""
        return {
            "version": self.STATE_VERSION,
            "method": self.ctx.owner,
            "pattern": str(self.pattern),
            "masks": self.masks.state_dict(),
            "step": self._step,
            "data_position": self.ctx.data.position,
            "shard": self.ctx.mode.shard(),
            "left_out": list(self._left_out),
            "state": self._method_state(),
        }

    def load_state_dict(self, state: Mapping) -> None:
        """Restore :meth:`state_dict` output and re-zero pruned weights. Mismatches raise ValueError (a state
        saved before any pruning loads into a pruner of any pattern: a fitted Q serves them all).

        Attached data restarts at the saved batch position (skipping batches); a fresh pruner re-attaches its
        data with ``fit(loader, 0)``, which resumes there too.
        """
        self._check_alive()
        left = state.get("left_out", []) if isinstance(state, Mapping) else []
        before = (list(self.views), list(self.unpruned), self._probed)
        moved = bool(left) and not self._left_out
        if moved:  # the saving pruner left them out at its first fit: do so first
            self._leave_out(left, UNREACHED)
            self._probed = True
        try:
            masks = checkpoint.checked_masks(state, self.ctx)
        except BaseException:
            if moved:
                self._rebuild(before[0])
                self.unpruned, self._probed, self._left_out = before[1], before[2], []
            raise
        snapshot = self._snapshot()
        try:
            if self._sequential is None:
                self.method.load_state_dict(state.get("state", {}))
            self.masks.load(masks)
        except BaseException:
            self._restore(snapshot)
            raise
        self._step = int(state.get("step", 0))
        self.ctx.data.resume_at(int(state.get("data_position", 0)))
        self.masks.apply()


def _check_sequential(
    sequential: str | None, blocks: str | None, offload: bool, schedule: object, distributed: object
) -> None:
    """ValueError naming the argument that ``sequential`` rules out (or that needs it)."""
    if sequential is None:
        if blocks is not None or offload:
            raise ValueError(f"{'blocks' if blocks is not None else 'offload'}: only with sequential='blocks'")
        return
    checks.choice("sequential", sequential, SEQUENTIAL)
    if schedule is not None:
        raise ValueError("schedule: sequential='blocks' prunes one-shot with prune(); gradual pruning is whole-model")
    if distributed is not None:
        raise ValueError("distributed: sequential='blocks' runs in one process")


def _check_options(cls: type[Pruner], args: tuple, options: Mapping[str, object]) -> None:
    """TypeError naming ``cls`` and the argument when ``cls(model, *args, **options)`` passes its method an
    option it does not take, with the options it does take (and, for another method's option, which pruners
    take it)."""
    positional, keywords = method_parameters(cls.method_class)
    accepted = [p.name for p in positional + keywords]
    own = [p for p in inspect.signature(Pruner.__init__).parameters if p not in ("self", "model", "method_args")]
    own.remove("method_options")
    if len(args) > len(positional):
        names = ", ".join(p.name for p in positional) or "none"
        raise TypeError(
            f"{cls.__name__}: takes {len(positional)} positional option(s) after model ({names}), got {len(args)}; "
            "pass the others by keyword"
        )
    if accepts_any_option(cls.method_class):
        return
    for key in options:
        if key in accepted:
            continue
        others = sorted(other.__name__ for other in _pruner_classes() if has_option(other.method_class, key))
        hint = f" ({key}= is an option of {', '.join(others)}; {cls.__name__} does not use it)" if others else ""
        raise TypeError(
            f"{cls.__name__}: unexpected argument {key!r}{hint}; it accepts {', '.join(accepted) or 'no options'} "
            f"and the pruner's {', '.join(own)}"
        )


def _pruner_classes() -> list[type[Pruner]]:
    """The pruners of this package (every :class:`Pruner` subclass defined in ``fls_kernels``)."""
    found, todo = [], list(Pruner.__subclasses__())
    while todo:
        cls = todo.pop()
        todo += cls.__subclasses__()
        if cls.__module__.startswith("fls_kernels."):
            found.append(cls)
    return found
