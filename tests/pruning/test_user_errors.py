"""What a new user meets first, each handled or refused with an error naming the cause and the fix: a layer out of
the likelihood's reach (an unused head), include/ignore patterns that match nothing, a bad batch after the first,
another method's options, a restored pruner without its data, and more batches asked for than the loader holds."""

from __future__ import annotations

import logging

import pytest
import torch
from torch import nn

import fls_kernels as fls
from tests.pruning.helpers import KINDS, SmallNet, assert_identical, build, expected_zeros, loader, make, snapshot

CURVATURE = ["fls", "obd", "obert", "kfac"]  # the methods that read the model's output


class WithHead(SmallNet):
    """SmallNet with a head whose output the forward computes but does not return (a pooler beside the
    sequence output)."""

    def __init__(self):
        super().__init__()
        self.head = nn.Linear(16, 3)
        self.side = None

    def forward(self, x):
        h = torch.relu(self.fc1(torch.relu(self.conv(x)).flatten(1)))
        self.side = self.head(h)
        return self.fc2(h)


# ---------------------------------------------------------------------------------------------- out of reach
@pytest.mark.parametrize("kind", KINDS)
def test_a_head_the_likelihood_does_not_read_is_left_out_by_the_curvature_methods(kind, caplog):
    torch.manual_seed(0)
    model = WithHead()
    with caplog.at_level(logging.INFO, logger="fls_kernels.pruning"):
        pruner = make(kind, model)
    pruner.prune(0.6)
    curvature = kind in CURVATURE
    assert ("head" in pruner.layer_names) is not curvature
    said = [r.getMessage() for r in caplog.records if "do not reach" in r.getMessage()]
    assert len(said) == (1 if curvature else 0)
    if curvature:
        assert said[0].endswith(": head") and pruner.layer_names == ["conv", "fc1", "fc2"]
        assert bool((model.head.weight != 0).all()), "the left-out head stays dense"
        assert "head.weight" in pruner.report() and "does not reach" in pruner.report()
    assert sum(int((v.weight == 0).sum()) for v in pruner.views) == expected_zeros(pruner, 0.6)


def test_a_left_out_layer_survives_a_checkpoint_into_a_fresh_pruner():
    torch.manual_seed(0)
    model = WithHead()
    pruner = make("fls", model)
    pruner.prune(0.5, substeps=2)
    state, weights = pruner.state_dict(), model.state_dict()
    assert state["left_out"] == ["head"]
    fresh = WithHead()
    fresh.load_state_dict(weights)
    other = build("fls", fresh)
    other.load_state_dict(state)
    assert other.layer_names == pruner.layer_names
    other.fit(loader(), 0)
    other.prune(0.7, substeps=2)
    pruner.prune(0.7, substeps=2)
    for name in pruner.masks:
        assert torch.equal(pruner.masks[name], other.masks[name]), name
    # a state for other layers is refused and leaves the pruner as it was
    plain = build("fls", SmallNet())
    with pytest.raises(ValueError, match="state_dict"):
        plain.load_state_dict(state)
    assert plain.layer_names == ["conv", "fc1", "fc2"] and plain.masks.attached


def test_no_layer_in_reach_is_refused_naming_output_eq():
    model = SmallNet()
    before = snapshot(model)
    pruner = fls.KFACPruner(model, stat_batches=2, output=lambda out: torch.zeros_like(out))
    with pytest.raises(ValueError, match="no prunable layer reaches .*output="):
        pruner.fit(loader())
    assert not pruner.fitted
    assert_identical(model, before)


# ---------------------------------------------------------------------------------------------- patterns
@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(ignore=("fc3",)), r"ignore: pattern 'fc3' matches no layer.*'conv', 'fc1', 'fc2'"),
        (dict(ignore=("fc",)), r"ignore: pattern 'fc' .*only part of 'fc1', 'fc2': write e.g. '\.\*fc\.\*'"),
        (dict(ignore=("fc1.weight",)), r"ignore: pattern 'fc1.weight' matches no layer"),
        (dict(include="nope"), r"include: pattern 'nope' matches no layer.*'conv', 'fc1', 'fc2'"),
        (dict(include="fc", ignore=("fc1",)), r"include: pattern 'fc' .*only part of"),
    ],
    ids=["ignore-typo", "ignore-prefix", "ignore-parameter-name", "include-typo", "include-prefix"],
)
@pytest.mark.parametrize("cls", [fls.FishLegPruner, fls.MagnitudePruner, fls.SparseGPTPruner])
def test_a_pattern_matching_nothing_is_refused_naming_it(cls, kwargs, match):
    model = SmallNet()
    with pytest.raises(ValueError, match=match):
        cls(model, **kwargs)
    assert not model.fc1.weight._backward_hooks


def test_patterns_that_match_are_accepted_and_an_include_without_layers_names_them():
    assert fls.MagnitudePruner(SmallNet(), ignore=("fc.*",)).layer_names == ["conv"]
    assert fls.MagnitudePruner(SmallNet(), include="fc.", ignore=("fc2",)).layer_names == ["fc1"]

    class Embedded(SmallNet):
        def __init__(self):
            super().__init__()
            self.embed = nn.Embedding(4, 3)

    with pytest.raises(ValueError, match=r"model: no prunable layers .*include='embed'.*its layers: 'conv'"):
        fls.MagnitudePruner(Embedded(), include="embed")
    assert [u.name for u in fls.MagnitudePruner(Embedded(), ignore=("embed",)).unpruned if not u.explicit] == []


# ---------------------------------------------------------------------------------------------- later batches
@pytest.mark.parametrize("cls", [fls.SparseGPTPruner, fls.WandaPruner])
def test_a_bad_later_batch_is_named_at_fit(cls):
    data = loader(batches=4)
    data[2] = (torch.randn(16, 1, 7, 7), data[2][1])  # the wrong image size
    model = SmallNet()
    before = snapshot(model)
    pruner = cls(model)
    with pytest.raises(ValueError, match=r"loader: the model's forward fails on batch 2 \(RuntimeError: "):
        pruner.fit(data)
    assert not pruner.fitted
    assert_identical(model, before)
    pruner.fit(loader(batches=4))
    pruner.prune(0.5)


# ---------------------------------------------------------------------------------------------- options
#: each built-in method → an option of another method, and the pruners that take it (a method not listed: the first
#: option, in name order, that another registered method takes and it does not, by :func:`other_option`)
OTHERS = {
    "fls": ("blocksize", "SparseGPTPruner"),
    "magnitude": ("likelihood", "FishLegPruner, KFACPruner, OBDPruner, OBERTPruner"),
    "obd": ("init", "FishLegPruner"),
    "obert": ("reweight", "CoresetPruner"),
    "kfac": ("lr", "FishLegPruner"),
    "coreset": ("damping", "FishLegPruner, KFACPruner, OBDPruner, OBERTPruner"),
    "sparsegpt": ("likelihood", "FishLegPruner, KFACPruner, OBDPruner, OBERTPruner"),
    "wanda": ("dampening", "SparseGPTPruner"),
}


def other_option(kind: str) -> tuple[str, str]:
    from fls_kernels.pruning.method import method_parameters

    def options(name: str) -> set[str]:
        positional, keywords = method_parameters(fls.PRUNERS[name].method_class)
        return {p.name for p in positional + keywords}

    option = min(set().union(*(options(k) for k in fls.PRUNERS if k != kind)) - options(kind))
    return option, ", ".join(sorted(cls.__name__ for k, cls in fls.PRUNERS.items() if option in options(k)))


@pytest.mark.parametrize("kind", KINDS)
def test_another_methods_option_is_refused_naming_the_public_class(kind):
    cls = fls.PRUNERS[kind]
    option, takers = OTHERS.get(kind) or other_option(kind)
    model = SmallNet()
    with pytest.raises(TypeError) as err:
        cls(model, **{option: 1})
    message = str(err.value)
    assert message.startswith(f"{cls.__name__}: unexpected argument {option!r} ({option}= is an option of {takers};")
    assert "__init__" not in message and "Layerwise" not in message and "and the pruner's pattern" in message
    with pytest.raises(TypeError, match=f"{cls.__name__}: unexpected argument 'nonsense'; it accepts"):
        cls(model, nonsense=1)
    assert not model.fc1.weight._backward_hooks


def test_too_many_positional_options_and_an_open_ended_method():
    with pytest.raises(TypeError, match=r"FishLegPruner: takes 2 positional option\(s\) after model"):
        fls.FishLegPruner(SmallNet(), "categorical", 0.1, 3)
    with pytest.raises(TypeError, match=r"MagnitudePruner: takes 0 positional"):
        fls.MagnitudePruner(SmallNet(), 0.5)

    class Anything(fls.Method):
        needs_data = False

        def __init__(self, **options):
            self.options = options

        def scores(self, index, W, alive):
            n = self.ctx.views[index].n_weight
            return W[:, :n].abs().masked_fill(~alive[:, :n], float("inf"))

    class AnythingPruner(fls.Pruner):
        method_class = Anything

    assert AnythingPruner(SmallNet(), colour="blue").method.options == {"colour": "blue"}


# ---------------------------------------------------------------------------------------------- restored
@pytest.mark.parametrize("kind", KINDS)
def test_fitted_agrees_with_prune_after_load_state_dict(kind):
    state = make(kind, SmallNet()).state_dict()
    other = build(kind, SmallNet())
    other.load_state_dict(state)
    if other.fitted:  # fitted means prune runs: only a method that needs no data is fitted without it
        assert not other.method.needs_data
        other.prune(0.5)
        return
    with pytest.raises(RuntimeError) as err:
        other.prune(0.5)
    if other.method.fitted:  # the method's state came back, the batches did not
        assert "re-attach it with fit(loader, 0) after load_state_dict" in str(err.value)
    else:
        assert "call fit(loader) first" in str(err.value)
    other.fit(loader(), 0)
    assert other.fitted
    other.prune(0.5)
    assert other.sparsity() > 0.49


# ---------------------------------------------------------------------------------------------- batch counts
@pytest.mark.parametrize("cls", [fls.SparseGPTPruner, fls.WandaPruner])
def test_more_held_batches_than_the_loader_holds_is_refused_naming_both(cls):
    pruner = cls(SmallNet(), calib_batches=10)
    with pytest.raises(ValueError, match=r"calib_batches: 10 batches asked for, but the loader holds 4"):
        pruner.fit(loader(batches=4))
    assert not pruner.fitted
    cls(SmallNet(), calib_batches=4).fit(loader(batches=4))


def test_coreset_warns_once_when_its_estimate_reads_batches_twice(caplog):
    pruner = fls.CoresetPruner(SmallNet(), calib_batches=10)
    with caplog.at_level(logging.WARNING, logger="fls_kernels.pruning"):
        pruner.fit(loader(batches=4))
        pruner.prune(0.5, substeps=2)
        pruner.fit(loader(batches=4))
    said = [r.getMessage() for r in caplog.records if "calib_batches" in r.getMessage()]
    assert len(said) == 1 and "calib_batches=10 but the loader holds 4 batches" in said[0]
