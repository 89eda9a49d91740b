"""FLS's focused probes: before the fit and each refinement, unit probe variance on each layer's lowest-scored share
of alive weights (the next candidates), 1% elsewhere; refused where it cannot be honoured."""

from __future__ import annotations

import math

import pytest
import torch

import fls_kernels as fls
from fls_kernels.pruning.methods.fishleg import FOCUS_BACKGROUND
from tests.pruning.helpers import SmallNet, assert_identical, expected_zeros, loader, snapshot


def _pruner(model, **kw):
    return fls.FishLegPruner(model, "categorical", init_batches=2, refine_steps=2, lr=1e-2, **kw)


def _expected_scale(pruner, index: int, focus: float) -> torch.Tensor:
    """S of layer ``index`` from first principles: the ⌈f·alive⌉ alive weights of lowest score (ties by order of
    the flattened scores, as topk breaks them: checked to be absent below), the rest and a bias column at 1%."""
    view, block = pruner.views[index], pruner.method.blocks[index]
    alive = pruner.masks.full(index)
    rho = pruner.method.scores(index, view.matrix(pruner.ctx.dtype), alive)
    finite = rho[torch.isfinite(rho)]
    assert finite.unique().numel() == finite.numel()  # no ties: the focused set is unique
    k = math.ceil(focus * int(alive[:, : view.n_weight].sum()))
    threshold = finite.sort().values[k - 1]
    scale = torch.full((block.m, block.n), FOCUS_BACKGROUND, dtype=block.dtype)
    scale[:, : view.n_weight][rho <= threshold] = 1.0
    return scale


def test_the_focus_is_each_layers_lowest_scored_share_of_alive_weights_before_fit_and_refinement():
    torch.manual_seed(0)
    pruner = _pruner(SmallNet(), probe_focus=0.3)
    pruner.fit(loader(), steps=2)
    fitter = pruner.method.fitter
    first = [s.clone() for s in fitter.probe_scale]
    for i in range(len(pruner.views)):  # λ moved since: recompute the focus at the λ the fit started from
        assert first[i].shape == (pruner.method.blocks[i].m, pruner.method.blocks[i].n)
        assert first[i].unique().tolist() == [torch.tensor(FOCUS_BACKGROUND, dtype=first[i].dtype).item(), 1.0]
        k = math.ceil(0.3 * pruner.views[i].weight.numel())
        assert int((first[i] == 1).sum()) == k
    pruner.method._focus()  # the focus at λ now equals the first-principles one
    for i in range(len(pruner.views)):
        assert torch.equal(fitter.probe_scale[i], _expected_scale(pruner, i, 0.3))
    calls = []
    run = fitter.run

    def spy(stream, steps, *, masks=None, **kw):
        calls.append(([s.clone() for s in fitter.probe_scale], [m.clone() for m in masks]))
        return run(stream, steps, masks=masks, **kw)

    fitter.run = spy
    pruner.prune(0.6, substeps=2)  # the refinement before the second sub-step refocuses on the masked model
    assert len(calls) == 1
    scales, masks = calls[0]
    for i, (scale, mask) in enumerate(zip(scales, masks)):
        n = pruner.views[i].n_weight
        alive = mask[:, :n].bool()
        assert 0 < int(alive.sum()) < alive.numel()  # the first sub-step pruned this layer
        focused = scale[:, :n] == 1
        assert not (focused & ~alive).any()  # pruned weights are never candidates
        assert int(focused.sum()) == math.ceil(0.3 * int(alive.sum()))
    assert sum(int((v.weight == 0).sum()) for v in pruner.views) == expected_zeros(pruner, 0.6)


def test_focused_probes_leave_the_isotropic_run_unchanged_when_off():
    torch.manual_seed(0)
    pruner = _pruner(SmallNet())
    pruner.fit(loader(), steps=2)
    assert pruner.method.fitter.probe_scale is None


@pytest.mark.parametrize(
    "value, error",
    [
        (0, ValueError),
        (1.5, ValueError),
        (-0.1, ValueError),
        (float("nan"), TypeError),
        (True, TypeError),
        ("a", TypeError),
    ],
)
def test_a_bad_probe_focus_is_refused_naming_it(value, error):
    model = SmallNet()
    before = snapshot(model)
    with pytest.raises(error, match="probe_focus"):
        _pruner(model, probe_focus=value)
    assert_identical(model, before)
