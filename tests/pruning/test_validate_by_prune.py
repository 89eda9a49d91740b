"""FLS's ``validate_by="prune"`` (block by block): each block's fit is validated by the block's held-out output error
after a trial prune with λ, and ends at the λ whose trial prunes best — the one the block is then pruned with."""

from __future__ import annotations

import copy
import math

import pytest
import torch

import fls_kernels as fls
from fls_kernels.pruning.sequential import output_error
from tests.pruning.helpers import assert_identical, build, snapshot
from tests.pruning.test_sequential import Stack, _data

RECIPE = dict(init="kfac", update="adaptive", allocation="uniform", refine_steps=0, lr=3e-2)


def _run(model, steps=4, sparsity=0.6, substeps=2, **kwargs):
    options = dict(sequential="blocks", validation=_data(seed=1), validate_every=1, **RECIPE)
    pruner = build("fls", model, **{**options, **kwargs})
    pruner.fit(_data(), steps=steps)
    pruner.prune(sparsity, substeps=substeps)
    return pruner


def _error(block, dense_block, inputs) -> float:
    with torch.no_grad():
        num = sum(float((block(x) - dense_block(x)).double().square().sum()) for x in inputs)
        den = sum(float(dense_block(x).double().square().sum()) for x in inputs)
    return num / den


def test_each_block_is_pruned_with_the_lambda_whose_trial_prune_had_the_least_held_out_output_error():
    """The recorded errors are real prunes' errors: the block's error after the actual prune equals the least of
    them (held-out inputs of block 1: block 0's pruned outputs; its reference: block 1 before its prune)."""
    model = Stack(widths=(6, 6, 6), seed=3)
    dense = copy.deepcopy(model)
    report = _run(model, validate_by="prune").block_report()
    inputs = _data(seed=1)
    for b, name in enumerate(["layers.0", "layers.1"]):
        errors = [e for _, e in report[name]["validation"]]
        assert [s for s, _ in report[name]["validation"]] == list(range(5))  # the start, then every step
        assert all(math.isfinite(e) and e > 0 for e in errors)
        actual = _error(model.layers[b], dense.layers[b], inputs)
        assert actual == pytest.approx(min(errors), rel=1e-9, abs=0), (name, errors)
        with torch.no_grad():
            inputs = [model.layers[b](x) for x in inputs]
    assert len({round(e, 12) for _, e in report["layers.0"]["validation"]}) > 1  # λ's differ in what they prune


def test_prune_last_measures_the_last_blocks_error_with_the_blocks_after_as_they_were():
    """``validate_by="prune-last"``: block 0's trials are scored at block 1's output (block 1 still dense), block 1's
    at its own output on the pruned block 0's outputs; both against the dense model. The least recorded error of
    each block is that of the actual prune."""
    model = Stack(widths=(6, 6, 6), seed=3)
    dense = copy.deepcopy(model)
    report = _run(model, validate_by="prune-last").block_report()
    local = _run(Stack(widths=(6, 6, 6), seed=3), validate_by="prune").block_report()
    inputs = _data(seed=1)
    with torch.no_grad():
        targets = [dense(x) for x in inputs]
        first = [dense.layers[1](model.layers[0](x)) for x in inputs]
        both = [model(x) for x in inputs]
    for name, outputs in (("layers.0", first), ("layers.1", both)):
        errors = [e for _, e in report[name]["validation"]]
        actual = sum(float((o - t).double().square().sum()) for o, t in zip(outputs, targets))
        actual /= sum(float(t.double().square().sum()) for t in targets)
        assert actual == pytest.approx(min(errors), rel=1e-9, abs=0), (name, errors)
    assert report["layers.0"]["validation"] != local["layers.0"]["validation"]


def test_the_fit_ends_at_the_best_trial_and_prunes_as_a_fit_of_that_many_steps():
    """One block: the prune-validated fit of 4 steps prunes bit for bit as an unvalidated fit of the best step count
    k — the trials leave λ's path, the weights, the masks and the random draws as they found them."""
    model = Stack(widths=(6, 6), seed=4)
    plain = copy.deepcopy(model)
    validated = _run(model, validate_by="prune")
    validation = validated.block_report()["layers.0"]["validation"]
    best = min(validation, key=lambda c: c[1])[0]
    assert 0 < best < 4, validation  # neither end: the fit's path matters
    pruner = build("fls", plain, sequential="blocks", **RECIPE)
    pruner.fit(_data(), steps=best)
    pruner.prune(0.6, substeps=2)
    assert_identical(plain, snapshot(model))
    assert all(torch.equal(pruner.masks[k], validated.masks[k]) for k in pruner.masks)


def test_the_aux_loss_validation_is_the_default_and_differs():
    model = Stack(widths=(6, 6, 6), seed=3)
    report = _run(model).block_report()
    assert all(e < 0 for _, e in report["layers.0"]["validation"])  # aux losses, not output errors


def test_output_error_is_relative_and_in_float64():
    runner = torch.nn.Identity()
    runner.forward = lambda x: x  # type: ignore[method-assign]
    ref = [torch.ones(2, 3), torch.full((1, 3), 2.0)]
    held = [{"x": torch.ones(2, 3) * 1.5}, {"x": torch.full((1, 3), 2.0)}]
    assert output_error(runner, held, ref) == pytest.approx(6 * 0.25 / (6 + 12), rel=1e-15)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(sequential="blocks", validate_by="prune"), "validate_by.*validation="),
        (dict(validate_by="prune", validation=_data(seed=1)), "validate_by.*sequential='blocks'"),
        (dict(sequential="blocks", validate_by="output", validation=_data(seed=1)), "validate_by"),
        (dict(sequential="blocks", validate_by="prune-last"), "validate_by.*validation="),
    ],
)
def test_bad_validate_by_is_refused_with_the_model_untouched(kwargs, match):
    model = Stack(widths=(6, 6, 6))
    before = snapshot(model)
    with pytest.raises(ValueError, match=match):
        fls.FishLegPruner(model, **kwargs)
    assert_identical(model, before)


def test_prune_last_on_blocks_that_do_not_chain_is_refused_with_the_model_untouched():
    model = Stack(widths=(6, 6, 6), between=True)
    before = snapshot(model)
    pruner = build("fls", model, sequential="blocks", validation=_data(seed=1), validate_by="prune-last", **RECIPE)
    pruner.fit(_data(), steps=2)
    with pytest.raises(ValueError, match="validate_by: .*do not chain"):
        pruner.prune(0.5)
    assert_identical(model, before)
