"""Prune targets: a requested sparsity as exact counts of pattern units, reached in sub-steps.

- :class:`GlobalTarget`: k units over all layers together (one ranking), k = ⌈s·d⌉.
- :class:`LayerTargets`: a count per layer (uniform allocation, or a dict of layer → sparsity).
- :class:`NMTarget`: j zeros in every group of M inputs (pattern N:M, j ≤ N).

Sub-step t of K moves each count along the cubic path start + ⌈(goal − start)·(1 − (1 − t/K)³)⌉ from where the
prune began; each yields an increment that chooses its weights from the scores.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping
from dataclasses import dataclass

from torch import Tensor

from fls_kernels import ops
from fls_kernels.pruning import checks
from fls_kernels.pruning.context import Context
from fls_kernels.pruning.maskstate import MaskState
from fls_kernels.pruning.patterns import NMPattern

ALLOCATIONS = ("global", "uniform")


def ceil_count(sparsity: float, total: int) -> int:
    """k = ⌈s·d⌉ (rounded first so that 0.7·100 gives 70, not 71)."""
    return math.ceil(round(sparsity * total, 9))


def _along(start: int, goal: int, frac: float) -> int:
    return start + math.ceil(round((goal - start) * frac, 9))


def _fractions(substeps: int) -> Iterator[tuple[int, float]]:
    for step in range(substeps):
        yield step, 1 - (1 - (step + 1) / substeps) ** 3  # cubic path, 1 at the last sub-step


class Increment:
    """What one sub-step removes; :meth:`choose` picks it from the scores."""

    #: whether scores are reduced to pattern units (blocks) before choosing
    per_unit = True

    def choose(self, ctx: Context, scores: list[Tensor | None], alive: list[Tensor]) -> list[Tensor | None]:
        """Per layer the weights removed now ([m, n_weight] bool; None for layers another rank owns)."""
        raise NotImplementedError

    def budget(self, index: int) -> Budget:
        """What layer ``index`` gives up now, for methods that choose and update a layer together."""
        raise TypeError(f"{type(self).__name__} has no per-layer budget (use a per-layer allocation)")


@dataclass(frozen=True)
class Budget:
    """One layer's share of a sub-step: ``new`` more weights pruned (unstructured), or — N:M — ``zeros`` zeros
    in every group of M inputs, counting those already pruned (``new`` is then None)."""

    new: int | None = None
    zeros: int | None = None


@dataclass(frozen=True)
class GlobalIncrement(Increment):
    new: int

    def choose(self, ctx: Context, scores: list[Tensor | None], alive: list[Tensor]) -> list[Tensor | None]:
        picked = ctx.mode.select_smallest(scores, self.new, ctx.backend_for("select_smallest"))
        return [ctx.pattern.expand(c) if c is not None else None for c in picked]


@dataclass(frozen=True)
class LayerIncrement(Increment):
    new: tuple[int, ...]

    def choose(self, ctx: Context, scores: list[Tensor | None], alive: list[Tensor]) -> list[Tensor | None]:
        chosen: list[Tensor | None] = [None] * len(scores)
        with ctx.mode.guarded():
            for i, s in enumerate(scores):
                if s is not None:
                    picked = ops.select_smallest([s], self.new[i], backend=ctx.backend_for("select_smallest"))[0]
                    chosen[i] = ctx.pattern.expand(picked)
        return chosen

    def budget(self, index: int) -> Budget:
        return Budget(new=self.new[index])


def select_nm_alive(ctx: Context, scores: Tensor, live: Tensor, zeros: int) -> Tensor:
    """The alive weights ([m, n_weight] bool) that bring every group of M inputs to ``zeros`` zeros, the already
    pruned ones counting first, by the smallest ``scores``."""
    ranked = scores.masked_fill(~live, float("-inf"))
    return ops.select_nm(ranked, zeros, ctx.pattern.m, backend=ctx.backend_for("select_nm")) & live


@dataclass(frozen=True)
class NMIncrement(Increment):
    zeros: int  # per group of M, counting those already pruned

    per_unit = False

    def choose(self, ctx: Context, scores: list[Tensor | None], alive: list[Tensor]) -> list[Tensor | None]:
        chosen: list[Tensor | None] = [None] * len(scores)
        with ctx.mode.guarded():
            for i, s in enumerate(scores):
                if s is None:
                    continue
                chosen[i] = select_nm_alive(ctx, s, alive[i][:, : ctx.views[i].n_weight], self.zeros)
        return chosen

    def budget(self, index: int) -> Budget:
        return Budget(zeros=self.zeros)


@dataclass(frozen=True)
class GlobalTarget:
    """``units`` pattern units pruned over all layers together."""

    units: int

    def grows(self, masks: MaskState) -> bool:
        return self.units > _pruned(masks)

    def substeps(self, masks: MaskState, count: int) -> Iterator[tuple[int, Increment]]:
        start = _pruned(masks)
        for step, frac in _fractions(count):
            new = _along(start, self.units, frac) - _pruned(masks)
            if new:
                yield step, GlobalIncrement(new)


@dataclass(frozen=True)
class LayerTargets:
    """A count of pruned pattern units per layer (in layer order)."""

    units: tuple[int, ...]

    def grows(self, masks: MaskState) -> bool:
        return any(goal > masks.pruned_units(i) for i, goal in enumerate(self.units))

    def substeps(self, masks: MaskState, count: int) -> Iterator[tuple[int, Increment]]:
        start = [masks.pruned_units(i) for i in range(len(self.units))]
        for step, frac in _fractions(count):
            new = tuple(_along(s, g, frac) - masks.pruned_units(i) for i, (s, g) in enumerate(zip(start, self.units)))
            if sum(new):
                yield step, LayerIncrement(new)


@dataclass(frozen=True)
class NMTarget:
    """``zeros`` zeros in every group of M inputs of every layer."""

    zeros: int

    def grows(self, masks: MaskState) -> bool:
        return self.zeros * masks.groups() > masks.num_pruned()

    def substeps(self, masks: MaskState, count: int) -> Iterator[tuple[int, Increment]]:
        start = masks.num_pruned() // masks.groups()
        for step, frac in _fractions(count):
            zeros = _along(start, self.zeros, frac)
            if zeros * masks.groups() != masks.num_pruned():
                yield step, NMIncrement(zeros)


Target = GlobalTarget | LayerTargets | NMTarget


def _pruned(masks: MaskState) -> int:
    return sum(masks.pruned_units(i) for i in range(len(masks.views)))


def parse(sparsity: object, masks: MaskState, allocation: str) -> Target:
    """Validate a requested ``sparsity`` (a number, a dict layer → number, or None for N:M's default N/M).

    Raises:
        ValueError / TypeError: naming ``sparsity``: out of range, unknown layers, not j/M for N:M, or below the
            current sparsity (pruned weights never come back).
    """
    if isinstance(masks.pattern, NMPattern):
        return _parse_nm(sparsity, masks)
    if sparsity is None:
        raise ValueError("sparsity: required (a number in [0, 1) or a dict of layer → sparsity)")
    current = masks.layer_sparsity()
    if isinstance(sparsity, Mapping):
        unknown = set(sparsity) - set(current)
        if unknown:
            raise ValueError(f"sparsity: unknown layers {sorted(unknown)}; prunable: {sorted(current)}")
        for name, value in sparsity.items():
            checks.sparsity(f"sparsity[{name!r}]", value)
        per_layer = {name: float(sparsity.get(name, current[name])) for name in current}  # others keep theirs
    else:
        checks.sparsity("sparsity", sparsity)
        if allocation == "global":
            total = sum(masks.total_units(i) for i in range(len(masks.views)))
            k = ceil_count(float(sparsity), total)
            if k < _pruned(masks):
                raise ValueError(f"sparsity: {sparsity} is below the current sparsity {masks.sparsity():.6f}")
            return GlobalTarget(k)
        per_layer = {name: float(sparsity) for name in current}
    counts = []
    for i, view in enumerate(masks.views):
        k = ceil_count(per_layer[view.name], masks.total_units(i))
        if k < masks.pruned_units(i):
            raise ValueError(
                f"sparsity: {per_layer[view.name]} for layer {view.name!r} is below its current sparsity "
                f"{current[view.name]:.6f}"
            )
        counts.append(k)
    return LayerTargets(tuple(counts))


def nm_zeros(sparsity: object, pattern: NMPattern, name: str = "sparsity") -> int:
    """The zeros per group of M that ``sparsity`` = j/M asks of an N:M ``pattern`` (j ≤ N); ValueError / TypeError
    naming ``name`` otherwise."""
    s = checks.sparsity(name, sparsity)
    zeros = round(s * pattern.m)
    if abs(s * pattern.m - zeros) > 1e-9 or zeros > pattern.n:
        raise ValueError(f"{name}: with pattern {pattern} use j/{pattern.m} for j ≤ {pattern.n}, got {s}")
    return zeros


def _parse_nm(sparsity: object, masks: MaskState) -> NMTarget:
    pattern = masks.pattern
    if sparsity is None:
        sparsity = pattern.n / pattern.m
    if isinstance(sparsity, Mapping):
        raise ValueError("sparsity: an N:M pattern prunes every layer alike; pass one number")
    zeros = nm_zeros(sparsity, pattern)
    s = float(sparsity)
    if zeros < masks.num_pruned() // masks.groups():
        raise ValueError(f"sparsity: {s} is below the current sparsity {masks.sparsity():.6f}")
    return NMTarget(zeros)
