"""FLS with ``anneal_damping`` c: λ starts damped by c·γ and the first fit that takes aux steps anneals their γ down
to γ (also after a checkpoint taken before them); γ itself, the validations, later fits and the refinements stay at
γ; bad values are refused before the model is touched."""

from __future__ import annotations

import pytest
import torch

import fls_kernels as fls
from tests.pruning.helpers import SmallNet, assert_identical, loader, snapshot


def _pruner(model, **kw):
    kw.setdefault("relative_damping", 0.1)
    return fls.FishLegPruner(
        model, "categorical", init="kfac", init_batches=2, refine_steps=2, lr=1e-2, update="adaptive", **kw
    )


def _factors(pruner):
    return [(b.R.detach().clone(), b.L.detach().clone(), b.A.detach().clone()) for b in pruner.method.blocks]


def test_the_start_is_damped_by_c_gamma_and_gamma_is_kept():
    torch.manual_seed(0)
    model = SmallNet()
    annealed, wider, plain = (
        _pruner(_copy(model), **kw) for kw in (dict(anneal_damping=10.0), dict(relative_damping=1.0), {})
    )
    for pruner in (annealed, wider, plain):
        pruner.fit(loader(batches=2), steps=0)
    for (R, L, A), (R2, L2, A2) in zip(_factors(annealed), _factors(wider)):
        assert torch.equal(R, R2) and torch.equal(L, L2) and torch.equal(A, A2)
    assert annealed.method.damping == plain.method.damping == pytest.approx(wider.method.damping / 10)
    assert not all(torch.equal(a[0], b[0]) for a, b in zip(_factors(annealed), _factors(plain)))


def test_only_the_first_aux_steps_anneal(monkeypatch):
    torch.manual_seed(0)
    pruner = _pruner(SmallNet(), anneal_damping=8.0)
    seen = []
    run = fls.curvature.AuxFitter.run

    def spy(self, *args, anneal=1.0, **kwargs):
        seen.append((anneal, self.damping))
        return run(self, *args, anneal=anneal, **kwargs)

    monkeypatch.setattr(fls.curvature.AuxFitter, "run", spy)
    pruner.fit(loader(), steps=0)  # the start, damped by 8γ: nothing to anneal yet
    state = pruner.state_dict()
    pruner.fit(loader(), steps=3)
    pruner.fit(loader(), steps=2)
    pruner.prune(0.6, substeps=2)  # a refinement before the second sub-step
    gamma = pruner.method.damping
    assert seen == [(1.0, gamma), (8.0, gamma), (1.0, gamma), (1.0, gamma)]
    resumed = _pruner(SmallNet(), anneal_damping=8.0)  # a checkpoint taken before the aux steps anneals them
    resumed.load_state_dict(state)
    resumed.fit(loader(), steps=2)
    assert seen[-1] == (8.0, gamma)


@pytest.mark.parametrize(
    "kwargs, error",
    [
        (dict(anneal_damping=0.5), ValueError),
        (dict(anneal_damping=0.0), ValueError),
        (dict(anneal_damping=float("nan")), TypeError),
        (dict(anneal_damping="2"), TypeError),
        (dict(anneal_damping=2.0, aux_compile="default"), ValueError),
    ],
)
def test_bad_annealing_is_refused_and_the_model_untouched(kwargs, error):
    model = SmallNet()
    before = snapshot(model)
    with pytest.raises(error, match="anneal_damping"):
        _pruner(model, **kwargs)
    assert_identical(model, before)


def _copy(model):
    other = SmallNet()
    other.load_state_dict(model.state_dict())
    return other
