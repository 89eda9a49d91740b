"""The method protocol: what a pruning method contributes to the one shared prune step.

A method scores weights and updates a layer after its pruned set is chosen; everything else (targets, masks,
selection, snapshots, distribution, checkpoints) is the pruner's. A new method is a subclass of
:class:`Method` and a :class:`~fls_kernels.pruning.pruner.Pruner` subclass naming it, in one module, plus its
line in :mod:`fls_kernels.pruning.registry`::

    class Magnitude(Method):
        name = "magnitude"
        needs_data = False

        def scores(self, index, W, alive):
            n = self.ctx.views[index].n_weight
            return W[:, :n].abs().masked_fill(~alive[:, :n], float("inf"))

    class MagnitudePruner(Pruner):
        method_class = Magnitude

Shapes: a layer's matrix W and its masks are [m, n] (bias folded in as the last column, always alive); scores
and chosen sets cover the weight columns only, [m, n_weight].
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, ClassVar

import torch
from torch import Tensor

from fls_kernels.pruning.context import Context

if TYPE_CHECKING:
    from fls_kernels.pruning.targets import Budget


class Method:
    """Base of every pruning method; the defaults are those of a method that learns nothing and only zeroes
    what it prunes. Constructor arguments are the method's own options, validated before any hook is attached.
    """

    #: registry name (e.g. "fls")
    name: ClassVar[str] = ""
    #: whether ``distributed="sharded"`` (per-layer owners of the method state) is supported
    shardable: ClassVar[bool] = False
    #: whether :meth:`fit` needs calibration data (False: ``pruner.fit()`` takes no loader)
    needs_data: ClassVar[bool] = True
    #: the allocations it supports, its default first
    allocations: ClassVar[tuple[str, ...]] = ("global", "uniform")
    #: whether it chooses and updates one layer at a time, in model order (:meth:`prune_layer`), instead of
    #: scoring every layer for a shared selection
    layerwise: ClassVar[bool] = False
    #: options of a base class that this method sets itself (not passed by users, e.g. FLS's stat_batches)
    hidden_options: ClassVar[tuple[str, ...]] = ()
    #: small budgets for a quick run on a toy model (smoke studies, parametrised tests); merged under the caller's
    #: options, never used by a pruner on its own
    quick_options: ClassVar[dict[str, object]] = {}
    #: options the method takes on each block with ``sequential="blocks"`` (e.g. a Gaussian likelihood on the
    #: block's output); a user's different value for one of them is refused
    block_options: ClassVar[dict[str, object]] = {}

    ctx: Context
    #: where the method's trial prunes are scored (:attr:`trial`): "block", "last" or None (it runs none)
    trial_at: str | None = None
    #: set by the block-sequential executor for a method with :attr:`trial_at` and held-out inputs of the block:
    #: ``trial()`` is the relative error Σ‖y(θ′) − y(θ)‖² / Σ‖y(θ)‖² on them after a trial prune θ → θ′ of the
    #: block to its target with the method's state as it is now, the block's weights and masks put back
    #: afterwards; y: the block's output ("block") or, where the blocks chain, the last block's ("last": the pruned
    #: block's outputs carried through the blocks after it, against the model's before the prune). None otherwise
    trial: Callable[[], float] | None = None

    def bind(self, ctx: Context) -> None:
        """Attach to a pruner's layers (allocate per-layer state here). Called once, by the pruner."""
        self.ctx = ctx

    @property
    def fitted(self) -> bool:
        """Whether :meth:`fit` has given the method what :meth:`scores` needs."""
        return True

    def unreached(self, batch: object) -> list[int]:
        """Indices of the layers whose weights cannot affect what the method measures on ``batch`` (e.g. a head
        the likelihood does not read); the pruner leaves them out before the first :meth:`fit`. Default: none."""
        return []

    def fit(self, steps: int) -> list[float]:
        """Learn from ``self.ctx.data`` (``steps`` iterations where the fit is iterative); returns the losses."""
        return []

    def forget(self) -> None:
        """Drop what a failed first :meth:`fit` left behind, so that :attr:`fitted` is False again."""

    def before_substep(self, substep: int) -> None:
        """Called before each sub-step's scoring (e.g. to refresh curvature on the current masks)."""

    def between_prunes(self) -> None:
        """Called by ``Pruner.step`` on training steps that do not prune (e.g. to keep refining curvature)."""

    def scores(self, index: int, W: Tensor, alive: Tensor) -> Tensor:
        """Saliency of each weight of layer ``index``: [m, n_weight], +inf where already pruned."""
        raise NotImplementedError

    def unit_scores(self, index: int, W: Tensor, alive: Tensor, scores: Tensor) -> Tensor:
        """Scores of the pattern's units (blocks): by default the sum of their weights' scores."""
        return self.ctx.pattern.reduce(scores)

    def selected(self, chosen: list[Tensor | None]) -> None:
        """Called with every layer's newly chosen weights ([m, n_weight] bool; None for layers another rank
        owns) before the updates."""

    def update(self, index: int, W: Tensor, prune: Tensor, keep: Tensor) -> Tensor | None:
        """Apply the removal of ``prune`` to W in place (all [m, n]); ``keep`` is alive afterwards. Default:
        zero the removed weights, no compensation. A method that picks the removed weights itself returns its
        own alive mask instead (as many removed per layer, and the pattern kept)."""
        W.masked_fill_(~keep, 0)
        return None

    def prune_layer(self, index: int, W: Tensor, alive: Tensor, budget: Budget) -> Tensor:
        """Layerwise methods: remove ``budget`` from layer ``index`` (W [m, n], updated in place) after the layers
        before it were committed; returns the new alive mask [m, n]."""
        raise NotImplementedError

    def state_dict(self) -> dict:
        """What the method has learnt, for checkpoints and the all-or-nothing snapshot."""
        return {}

    def load_state_dict(self, state: dict) -> None:
        """Restore :meth:`state_dict` output (an empty dict: nothing saved)."""

    def memory(self) -> dict[str, int]:
        """Bytes the method holds beside the model, by kind."""
        return {}


class Recomputing(Method):
    """A method that estimates what it needs from data at ``fit`` and again before every sub-step, on the
    current (masked, possibly fine-tuned) model: :meth:`recompute` is its one hook.

    The first sub-step after a ``fit`` uses the fit's estimate when nothing it was taken from has changed since:
    every parameter and buffer of the model (:func:`fingerprint`), the masks and the attached data stream
    (the same stream, at the same batch) — on every rank. So ``fit`` then ``prune(s)`` estimates once, not twice;
    a model fine-tuned, masks changed or a checkpoint loaded in between is estimated afresh."""

    #: what the last ``fit``'s estimate was taken from (:meth:`_source`), until the next sub-step reads it
    _fresh: tuple[object, int, Tensor] | None = None

    def recompute(self) -> None:
        raise NotImplementedError

    def fit(self, steps: int) -> list[float]:
        self._fresh = None
        self.recompute()
        self._fresh = self._source()
        return []

    def before_substep(self, substep: int) -> None:
        fresh, self._fresh = self._fresh, None
        if substep == 0 and fresh is not None and self._unchanged(fresh):
            return
        self.recompute()

    def _source(self) -> tuple[object, int, Tensor]:
        """(the data stream, its position, fingerprint of the model and masks) now."""
        stream = self.ctx.data.stream
        model, masks = self.ctx.model, [self.ctx.masks[name] for name in self.ctx.masks]
        return stream, self.ctx.data.position, fingerprint([*model.parameters(), *model.buffers(), *masks])

    def _unchanged(self, fresh: tuple[object, int, Tensor]) -> bool:
        """Whether :meth:`_source` is still ``fresh``, on every rank (a distributed prune counts the ranks where it
        changed in its one :meth:`~fls_kernels.distributed.Comm.check`)."""
        stream, position, print_ = self._source()
        same = stream is fresh[0] and position == fresh[1] and torch.equal(print_, fresh[2])
        comm = self.ctx.mode.comm
        if comm is None:
            return same
        return float(comm.check(torch.tensor([0.0 if same else 1.0]))) == 0.0


@torch.no_grad()
def fingerprint(tensors: Iterable[Tensor]) -> Tensor:
    """[Σ x, ‖x‖₂] in float64 of each of ``tensors`` (integer and bool ones: Σ x twice), stacked on the first one's
    device: equal for unchanged contents (a training step, a weight edit or a re-zeroing moves some sum), and NaN is
    never equal to itself; reductions only, no copy of a tensor."""
    sums: list[Tensor] = []
    for t in tensors:
        t = torch.view_as_real(t.detach()) if t.is_complex() else t.detach()
        total = t.sum(dtype=torch.float64)
        norm = torch.linalg.vector_norm(t, dtype=torch.float64) if t.is_floating_point() else total
        pair = torch.stack([total, norm])
        sums.append(pair if not sums else pair.to(sums[0].device, non_blocking=True))
    return torch.stack(sums).flatten() if sums else torch.zeros(0, dtype=torch.float64)


def _init_chain(method_class: type[Method]) -> list[list[inspect.Parameter]]:
    """The parameters (after ``self``) of each ``__init__`` along ``method_class``'s MRO, up to and including the
    first that takes no ``**kwargs`` (where the options passed on stop)."""
    chain = []
    for klass in method_class.__mro__:
        if klass is object or "__init__" not in vars(klass):
            continue
        chain.append(list(inspect.signature(vars(klass)["__init__"]).parameters.values())[1:])
        if not any(p.kind is p.VAR_KEYWORD for p in chain[-1]):
            break
    return chain


def method_parameters(method_class: type[Method]) -> tuple[list[inspect.Parameter], list[inspect.Parameter]]:
    """(positional, keyword-only) options of ``method_class``, gathered along its classes' ``__init__`` chain
    (each passing ``*args, **kwargs`` on to the next)."""
    positional: list[inspect.Parameter] = []
    keywords: dict[str, inspect.Parameter] = {}
    for params in _init_chain(method_class):
        if not positional:
            positional = [p for p in params if p.kind is p.POSITIONAL_OR_KEYWORD]
        for p in params:
            if p.kind is p.KEYWORD_ONLY:
                keywords.setdefault(p.name, p)
    hidden = set(method_class.hidden_options)
    return [p for p in positional if p.name not in hidden], [p for p in keywords.values() if p.name not in hidden]


def has_option(method_class: type[Method], option: str) -> bool:
    """Whether ``option`` is one of ``method_class``'s options (:func:`method_parameters`)."""
    return any(p.name == option for group in method_parameters(method_class) for p in group)


def accepts_any_option(method_class: type[Method]) -> bool:
    """Whether the method's ``__init__`` chain ends in a ``**kwargs`` it keeps (any keyword is its own)."""
    chain = _init_chain(method_class)
    return bool(chain) and any(p.kind is p.VAR_KEYWORD for p in chain[-1])
