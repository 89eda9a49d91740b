"""The engine's public seams: a method written against the protocol alone runs every pattern, allocation and
schedule exactly; the registry exports every pruner; targets follow the cubic sub-step path."""

from __future__ import annotations

import inspect

import pytest
import torch

import fls_kernels as fls
from fls_kernels.pruning import Method, Pruner, targets
from fls_kernels.pruning.maskstate import MaskState
from fls_kernels.pruning.method import method_parameters
from fls_kernels.pruning.patterns import parse_pattern
from fls_kernels.pruning.registry import PRUNERS
from tests.pruning.helpers import PatternNet, SmallNet, loader
from tests.pruning.pinned import pattern_data


class SquaredMagnitude(Method):
    """ρ = θ², pruned weights halved-and-zeroed: a method that exists only in this test."""

    name = "squared"

    def __init__(self, *, shrink: float = 1.0) -> None:
        self.shrink = shrink
        self.calls: list[str] = []

    def fit(self, steps: int) -> list[float]:
        self.ctx.data.require("fit")
        self.calls.append("fit")
        return [float(steps)]

    def before_substep(self, substep: int) -> None:
        self.calls.append(f"substep {substep}")

    def scores(self, index, W, alive):
        n = self.ctx.views[index].n_weight
        return (W[:, :n] ** 2).masked_fill(~alive[:, :n], float("inf"))

    def update(self, index, W, prune, keep):
        W.mul_(self.shrink).masked_fill_(~keep, 0)


class SquaredPruner(Pruner):
    method_class = SquaredMagnitude


def _magnitude_twin(model, **kw):
    twin = fls.MagnitudePruner(model, **kw)
    twin.fit()
    return twin


@pytest.mark.parametrize(
    "kw,sparsity,substeps_run",
    [(dict(), 0.7, 3), (dict(allocation="uniform"), 0.6, 3), (dict(pattern="2:4"), None, 1)],
    ids=["global", "uniform", "2:4"],
)
def test_a_method_on_the_protocol_alone_prunes_like_magnitude(kw, sparsity, substeps_run):
    """θ² ranks like |θ|, so with no shrinkage the new method must remove exactly magnitude's weights (2:4 from
    0 to 2 zeros per group gets there in its first cubic sub-step: ⌈2·(1 − (2/3)³)⌉ = 2)."""
    torch.manual_seed(0)
    a, b = PatternNet(), PatternNet()
    b.load_state_dict(a.state_dict())
    pruner = SquaredPruner(a, **kw)
    assert pruner.fit(pattern_data(), steps=3) == [3.0]
    pruner.prune(sparsity, substeps=3)
    twin = _magnitude_twin(b, **kw)
    twin.prune(sparsity, substeps=3)
    for name in pruner.masks:
        assert torch.equal(pruner.masks[name], twin.masks[name]), name
    assert pruner.sparsity() == twin.sparsity() > 0
    assert pruner.method.calls == ["fit"] + [f"substep {t}" for t in range(substeps_run)]


def test_a_method_on_the_protocol_alone_removes_the_lowest_scored_blocks():
    """block2x2, one shot: every removed block's Σθ² is at most every kept block's."""
    torch.manual_seed(0)
    model = PatternNet()
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    pruner = SquaredPruner(model, pattern="block2x2")
    pruner.fit(pattern_data())
    pruner.prune(0.5)
    removed, kept = [], []
    for v in pruner.views:
        w = before[f"{v.name}.weight"].reshape(v.m, v.n_weight)
        blocks = (w**2).reshape(v.m // 2, 2, v.n_weight // 2, 2).sum(dim=(1, 3))
        dead = ~pruner.masks[v.name].reshape(v.m, v.n_weight)[::2, ::2]
        removed.append(blocks[dead])
        kept.append(blocks[~dead])
    assert torch.cat(removed).max() <= torch.cat(kept).min()
    assert pruner.sparsity() == 0.5


def test_a_method_fails_mid_step_and_nothing_changes():
    model = SmallNet()
    pruner = SquaredPruner(model, shrink=0.5)
    pruner.fit(loader())
    before = {k: v.clone() for k, v in model.state_dict().items()}

    def boom(index, W, prune, keep):
        if index == 2:
            raise RuntimeError("boom")
        W.masked_fill_(~keep, 0)

    pruner.method.update = boom
    with pytest.raises(RuntimeError, match="boom"):
        pruner.prune(0.5, substeps=2)
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in before.items())
    assert pruner.sparsity() == 0


def test_method_options_are_checked_before_any_hook_and_show_in_the_signature():
    model = SmallNet()
    with pytest.raises(TypeError, match="shrinkage"):
        SquaredPruner(model, shrinkage=2.0)
    assert not model.fc1.weight._backward_hooks
    params = inspect.signature(SquaredPruner).parameters
    assert list(params)[:2] == ["model", "shrink"] and "pattern" in params and "distributed" in params
    fls_params = inspect.signature(fls.FishLegPruner).parameters
    assert {"likelihood", "damping", "init", "refine_steps", "precision", "seed", "pattern"} <= set(fls_params)


def _defined_pruners() -> set[type[Pruner]]:
    """Every Pruner subclass defined in a module of fls_kernels.pruning.methods."""
    import importlib
    import pkgutil

    import fls_kernels.pruning.methods as package

    found = set()
    for info in pkgutil.iter_modules(package.__path__):
        module = importlib.import_module(f"{package.__name__}.{info.name}")
        for value in vars(module).values():
            if isinstance(value, type) and issubclass(value, Pruner) and value.__module__ == module.__name__:
                found.add(value)
    return found


def test_registry_lists_every_pruner_and_fls_kernels_exports_them():
    defined = _defined_pruners()
    assert set(PRUNERS.values()) == defined and len(defined) >= 8  # a method left out of the registry fails here
    assert {"fls", "magnitude", "obd", "obert", "kfac", "coreset", "sparsegpt", "wanda"} <= set(PRUNERS)
    for name, cls in PRUNERS.items():
        assert issubclass(cls, Pruner) and cls.method_class.name == name
        assert getattr(fls, cls.__name__) is cls and cls.__name__ in fls.__all__
    assert fls.Pruner is Pruner and fls.Method is Method


@pytest.mark.parametrize("name", list(PRUNERS))
def test_quick_options_are_options_of_their_method(name):
    """A method's quick options (small budgets for smoke runs and tests) name its own options: a typo fails."""
    method = PRUNERS[name].method_class
    positional, keywords = method_parameters(method)
    assert set(method.quick_options) <= {p.name for p in positional + keywords}, name
    PRUNERS[name](SmallNet(), **method.quick_options).finalize()


@pytest.mark.parametrize("substeps", [1, 3, 16])
def test_global_target_walks_the_cubic_path_to_exactly_k(substeps):
    model = SmallNet()
    masks = MaskState(model, fls.MagnitudePruner(SmallNet()).views, parse_pattern("unstructured"))
    goal = targets.parse(0.7, masks, "global")
    assert isinstance(goal, targets.GlobalTarget) and goal.units == targets.ceil_count(0.7, masks.num_prunable())
    removed, fractions = 0, []
    for step, inc in goal.substeps(masks, substeps):
        assert isinstance(inc, targets.GlobalIncrement) and inc.new > 0
        fractions.append((step, inc.new))
        # apply the increment to the first alive weights, as a step would
        flat = [masks[v.name].view(-1) for v in masks.views]
        left = inc.new
        for f in flat:
            take = min(left, int(f.sum()))
            f[f.nonzero()[:take, 0]] = False
            left -= take
        removed += inc.new
    assert removed == goal.units
    for step, new in fractions:  # the count reached after step t is ⌈k·(1 − (1 − (t+1)/K)³)⌉
        assert sum(n for s, n in fractions if s <= step) == targets.ceil_count(
            1 - (1 - (step + 1) / substeps) ** 3, goal.units
        )


def test_targets_are_typed_by_pattern_and_allocation():
    views = fls.MagnitudePruner(PatternNet()).views
    masks = MaskState(PatternNet(), views, parse_pattern("2:4"))
    assert targets.parse(None, masks, "global") == targets.NMTarget(2)
    masks = MaskState(PatternNet(), views, parse_pattern("unstructured"))
    per_layer = targets.parse({"fc1": 0.5}, masks, "global")
    assert isinstance(per_layer, targets.LayerTargets)
    assert per_layer.units == (0, targets.ceil_count(0.5, views[1].m * views[1].n_weight), 0)
    uniform = targets.parse(0.5, masks, "uniform")
    assert uniform.units == tuple(targets.ceil_count(0.5, v.m * v.n_weight) for v in views)
