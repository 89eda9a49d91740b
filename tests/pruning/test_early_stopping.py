"""FLS's held-out aux loss and early stopping: the fit and each refinement end at the λ whose aux loss on batches
the fit never saw is lowest, so λ never leaves its start for worse there."""

from __future__ import annotations

import pytest
import torch

import fls_kernels as fls
from tests.pruning.helpers import SmallNet, assert_identical, expected_zeros, loader, snapshot


def _pruner(model, **kw):
    return fls.FishLegPruner(model, "categorical", init_batches=2, refine_steps=6, lr=1e-2, **kw)


def test_the_fit_and_each_refinement_end_at_their_best_held_out_lambda():
    torch.manual_seed(0)
    held = loader(batches=2, seed=5)
    pruner = _pruner(SmallNet(), validation=held, validate_every=2)
    pruner.fit(loader(), steps=8)
    fitter = pruner.method.fitter
    fit_checks = list(fitter.validation)
    assert [s for s, _ in fit_checks] == [0, 2, 4, 6, 8]
    assert pruner.aux_loss(held, seed=0) == min(v for _, v in fit_checks)  # the same probes: λ is the best one
    pruner.prune(0.6, substeps=2)
    refine = fitter.validation[len(fit_checks) :]
    assert [s for s, _ in refine] == [8, 10, 12, 14]  # one refinement, before the second sub-step
    assert sum(int((v.weight == 0).sum()) for v in pruner.views) == expected_zeros(pruner, 0.6)


def test_without_validation_nothing_is_validated_and_aux_loss_is_still_available():
    pruner = _pruner(SmallNet())
    with pytest.raises(RuntimeError, match="aux_loss: call fit"):
        pruner.aux_loss(loader(batches=1))
    pruner.fit(loader(), steps=3)
    assert pruner.method.fitter.validation == []
    a = pruner.aux_loss(loader(batches=1, seed=9), probes=3, seed=4)
    assert a == pruner.aux_loss(loader(batches=1, seed=9), probes=3, seed=4)


@pytest.mark.parametrize(
    "kwargs, error, match",
    [
        (dict(validation=3), TypeError, "validation"),
        (dict(validation=[]), ValueError, "validation"),
        (dict(validation=torch.zeros(3)), TypeError, "validation"),
        (dict(validate_every=0), ValueError, "validate_every"),
        (dict(validation_probes=0), ValueError, "validation_probes"),
    ],
)
def test_bad_early_stopping_options_are_refused(kwargs, error, match):
    model = SmallNet()
    before = snapshot(model)
    with pytest.raises(error, match=match):
        _pruner(model, **kwargs)
    assert_identical(model, before)
    assert not model.fc1.weight._backward_hooks


def test_refine_from_init_restarts_lambda_from_statistics_of_the_masked_model(monkeypatch):
    calls = []
    original = fls.FishLegPruner.method_class.statistics

    def counted(self, *args, **kwargs):
        calls.append(self.ctx.masks.num_pruned())
        return original(self, *args, **kwargs)

    monkeypatch.setattr(fls.FishLegPruner.method_class, "statistics", counted)
    torch.manual_seed(0)
    pruner = _pruner(SmallNet(), init="kfac", refine_from="init")
    pruner.fit(loader(), steps=4)
    pruner.prune(0.7, substeps=3)
    assert len(calls) == 3 and calls[0] == 0 and 0 < calls[1] < calls[2], "fit, then before sub-steps 2 and 3"
    steps = {int(s["step"]) for s in pruner.method.fitter.optimizer.state.values()}
    assert steps == {6}, "Adam restarts with λ: only the last refinement's steps"
    assert sum(int((v.weight == 0).sum()) for v in pruner.views) == expected_zeros(pruner, 0.7)
    with pytest.raises(ValueError, match="refine_from"):
        _pruner(SmallNet(), refine_from="kfac")


@pytest.mark.parametrize(
    "space,update,masked",
    [("alive", "adaptive", True), ("full", "adaptive", False), ("auto", "adaptive", False), ("auto", "diagonal", True)],
)
def test_aux_space_sets_what_the_refinement_and_its_validation_fit(space, update, masked, monkeypatch):
    """aux_space="alive": after a prune the aux steps and the held-out aux loss take the masks (the restricted
    inverse); "full": no masks (every weight at its current value), so the factors fit the pruned model's F;
    "auto": the one the update reads."""
    torch.manual_seed(0)
    held = loader(batches=1, seed=5)
    pruner = _pruner(SmallNet(), validation=held, validate_every=3, aux_space=space, init="kfac", update=update)
    assert pruner.method.aux_space == ("alive" if masked else "full")
    pruner.fit(loader(), steps=2)
    fitter, seen = pruner.method.fitter, []
    run, evaluate = fitter.run, fitter.evaluate
    monkeypatch.setattr(
        fitter, "run", lambda *a, masks=None, **k: seen.append(("run", masks)) or run(*a, masks=masks, **k)
    )
    monkeypatch.setattr(
        fitter, "evaluate", lambda *a, masks=None, **k: seen.append(("aux", masks)) or evaluate(*a, masks=masks, **k)
    )
    pruner.prune(0.6, substeps=2)
    assert {kind for kind, _ in seen} == {"run", "aux"}
    assert all((masks is None) != masked for _, masks in seen), seen
    assert sum(int((v.weight == 0).sum()) for v in pruner.views) == expected_zeros(pruner, 0.6)
    with pytest.raises(ValueError, match="aux_space"):
        fls.FishLegPruner(SmallNet(), aux_space="masked")


@pytest.mark.parametrize("update", ["adaptive", "diagonal"])
def test_restarting_with_no_aux_step_is_kfac_re_estimated(update):
    """refine_from="init" with no aux step re-estimates λ from the masked model's K-FAC statistics before every
    later sub-step, as K-FAC does (whose first sub-step reads its fit's estimate too): with the same seed both draw
    the same labels in the same order and prune bit for bit alike; without the restart they do not."""
    torch.manual_seed(0)
    model = SmallNet()
    common = dict(relative_damping=0.1, update=update)

    def pruned(make):
        m = SmallNet()
        m.load_state_dict(model.state_dict())
        pruner = make(m)
        pruner.fit(loader(batches=2), steps=0)  # every estimate reads both batches
        pruner.prune(0.7, substeps=3)
        pruner.finalize()
        return snapshot(m)

    def fls_pruner(refine_from):
        return lambda m: fls.FishLegPruner(
            m, "categorical", init="kfac", init_batches=2, refine_steps=0, refine_from=refine_from, **common
        )

    kfac = pruned(lambda m: fls.KFACPruner(m, "categorical", stat_batches=2, **common))
    restart, current = pruned(fls_pruner("init")), pruned(fls_pruner("current"))
    assert kfac.keys() == restart.keys()
    for k in kfac:
        assert torch.equal(restart[k], kfac[k]), k
    assert not torch.allclose(current["fc1.weight"], kfac["fc1.weight"]), "the frozen start differs"
