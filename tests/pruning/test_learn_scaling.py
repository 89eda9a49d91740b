"""FLS with ``learn_scaling=False``: the aux steps move only the Kronecker factors, A stays at its start through
the fit, the refinements and a checkpoint round trip; a non-bool is refused before the model is touched."""

from __future__ import annotations

import pytest
import torch

import fls_kernels as fls
from tests.pruning.helpers import SmallNet, assert_identical, loader, snapshot


def _pruner(model, **kw):
    return fls.FishLegPruner(
        model, "categorical", init="kfac", init_batches=2, refine_steps=2, lr=1e-2, update="adaptive", **kw
    )


def test_a_stays_at_its_kfac_start_while_r_and_l_move():
    torch.manual_seed(0)
    pruner = _pruner(SmallNet(), learn_scaling=False)
    pruner.fit(loader(), steps=3)
    blocks = pruner.method.blocks
    start = [(b.R.detach().clone(), b.L.detach().clone()) for b in blocks]
    pruner.fit(loader(), steps=3)
    pruner.prune(0.6, substeps=2)  # with a refinement before the second sub-step
    assert all(torch.equal(b.A, torch.ones_like(b.A)) for b in blocks)
    assert all(not torch.equal(b.R, R) and not torch.equal(b.L, L) for b, (R, L) in zip(blocks, start))
    state = pruner.state_dict()
    again = _pruner(SmallNet(), learn_scaling=False)
    again.load_state_dict(state)
    again.fit(loader(), steps=2)
    assert all(torch.equal(b.A, torch.ones_like(b.A)) for b in again.method.blocks)


def test_learning_a_moves_it_from_its_start():
    torch.manual_seed(0)
    pruner = _pruner(SmallNet())
    pruner.fit(loader(), steps=3)
    assert any(not torch.equal(b.A, torch.ones_like(b.A)) for b in pruner.method.blocks)


def test_a_non_bool_is_refused_naming_the_option_and_leaves_the_model_alone():
    model = SmallNet()
    before = snapshot(model)
    with pytest.raises(TypeError, match="learn_scaling"):
        _pruner(model, learn_scaling="no")
    assert_identical(model, before)


def test_balanced_factors_start_at_one_scale_with_the_same_q():
    torch.manual_seed(0)
    plain, balanced = _pruner(SmallNet()), _pruner(SmallNet(), balance_factors=True)
    balanced.model.load_state_dict(plain.model.state_dict())
    for p in (plain, balanced):
        p.fit(loader(), steps=0)
    for a, b in zip(plain.method.blocks, balanced.method.blocks):
        rms = [float(t.detach().square().mean().sqrt()) for t in (b.R, b.L)]
        assert rms[0] == pytest.approx(rms[1], rel=1e-5)
        V = torch.randn(a.m, a.n)
        torch.testing.assert_close(b.qv(V).detach(), a.qv(V).detach(), rtol=1e-4, atol=1e-6)
    with pytest.raises(TypeError, match="balance_factors"):
        _pruner(SmallNet(), balance_factors=1)


@pytest.mark.parametrize("refine_from", ["current", "init"])
def test_triangular_factors_stay_triangular_through_fit_refinements_and_a_checkpoint(refine_from):
    torch.manual_seed(0)
    pruner = _pruner(SmallNet(), triangular_factors=True, refine_from=refine_from)
    pruner.fit(loader(), steps=3)
    pruner.prune(0.6, substeps=2)  # a refinement (from a restart with "init") before the second sub-step
    again = _pruner(SmallNet(), triangular_factors=True, refine_from=refine_from)
    again.load_state_dict(pruner.state_dict())
    again.fit(loader(), steps=2)
    for p in (pruner, again):
        for b in p.method.blocks:
            assert torch.equal(b.R, b.R.triu()) and torch.equal(b.L, b.L.tril())
    full = _pruner(SmallNet())
    full.fit(loader(), steps=3)
    assert any(not torch.equal(b.L, b.L.tril()) for b in full.method.blocks)
    model = SmallNet()
    before = snapshot(model)
    with pytest.raises(TypeError, match="triangular_factors"):
        _pruner(model, triangular_factors="yes")
    assert_identical(model, before)
