"""The quality studies build their pruners from the registry: each study's rows by label with its options, every
other registered method by its name, unknown names refused."""

from __future__ import annotations

import pytest
import torch

import fls_kernels as fls
from benchmarks.quality import digits, methods, minilm
from fls_kernels import demo
from fls_kernels.pruning import Method, Pruner


class Halving(Method):
    """A throw-away method that no study names: ρ = |θ|, a method option, and the seed option."""

    name = "halving"

    def __init__(self, *, seed: int = 0, relative_damping: float = 1.0) -> None:
        self.seed, self.relative_damping = seed, relative_damping

    def scores(self, index, W, alive):
        n = self.ctx.views[index].n_weight
        return W[:, :n].abs().masked_fill(~alive[:, :n], float("inf"))


class HalvingPruner(Pruner):
    method_class = Halving


@pytest.fixture
def registered(monkeypatch):
    monkeypatch.setitem(fls.PRUNERS, "halving", HalvingPruner)


STUDY = {"Fast": ("magnitude", None), "FLS-tiny": ("fls", lambda steps: dict(refine_steps=steps))}


def test_labels_are_the_studys_rows_then_every_other_registered_method(registered):
    got = methods.labels(STUDY)
    assert got[:2] == ("Fast", "FLS-tiny")
    assert set(got[2:]) == set(fls.PRUNERS) - {"magnitude", "fls"} and "halving" in got


def test_build_gives_shared_options_only_to_methods_that_have_them_and_the_studys_over_them(registered):
    model = demo.DigitsCNN()
    shared = dict(seed=3, relative_damping=0.5, likelihood="categorical")
    fast = methods.build(STUDY, "Fast", model, shared, {})
    assert type(fast) is fls.MagnitudePruner
    tiny = methods.build(STUDY, "FLS-tiny", demo.DigitsCNN(), shared, dict(steps=7), allocation="uniform")
    assert (tiny.method.refine_steps, tiny.method.relative_damping, tiny.ctx.allocation) == (7, 0.5, "uniform")
    new = methods.build(STUDY, "halving", demo.DigitsCNN(), shared, {})
    assert type(new) is HalvingPruner and (new.method.seed, new.method.relative_damping) == (3, 0.5)
    assert methods.layerwise(STUDY, "sparsegpt") and not methods.layerwise(STUDY, "Fast")
    for pruner in (fast, tiny, new):
        pruner.finalize()


@pytest.mark.parametrize("label", ["FLS-huge", "flss", "Magnitude"])
def test_an_unknown_method_is_refused_naming_it(label):
    with pytest.raises(ValueError, match=f"method: unknown '{label}'"):
        methods.build(STUDY, label, demo.DigitsCNN(), {}, {})
    with pytest.raises(ValueError, match="method: unknown"):
        digits.make(label, demo.DigitsCNN(), 1.0, digits.Protocol(), 0)  # no silent fallback to magnitude


def test_a_registered_method_runs_in_the_digits_study_with_no_edit_there(registered):
    assert "halving" in methods.labels(digits.STUDY) and "halving" not in digits.STUDY
    protocol = digits.Protocol(substeps=2)
    pruner = digits.make("halving", demo.DigitsCNN(), 10.0, protocol, 4)
    assert type(pruner) is HalvingPruner and (pruner.method.seed, pruner.method.relative_damping) == (4, 10.0)
    pruner.fit([(torch.zeros(2, 1, 8, 8), torch.zeros(2, dtype=torch.long))], steps=0)
    assert pruner.prune(0.5, substeps=2) == pytest.approx(0.5, abs=0.01)


def test_the_studies_rows_build_the_pruners_they_name():
    protocol = digits.Protocol()
    for label, (name, _) in digits.STUDY.items():
        pruner = digits.make(label, demo.DigitsCNN(), 1.0, protocol, 0)
        assert type(pruner) is fls.PRUNERS[name], label
        pruner.finalize()
    assert digits.CURVATURE == {"FLS", "FLS-uniform", "FLS-diagonal", "SparseGPT", "OBD", "oBERT", "K-FAC"}
    assert digits.LAYERWISE == {"SparseGPT", "Wanda"} and set(minilm.LAYERWISE) == {"SparseGPT", "Wanda"}
    sparsegpt = digits.make("SparseGPT", demo.DigitsCNN(), 2.0, protocol, 0)  # its 1% dampening × the grid value
    assert sparsegpt.method.dampening == pytest.approx(0.02)
