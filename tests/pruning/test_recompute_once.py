"""Methods that re-estimate before every sub-step (K-FAC, OBD, oBERT, coreset) estimate once for ``fit`` then
``prune``: the first sub-step uses the fit's estimate while the model, its masks and the data stream are as the fit
left them, and estimates afresh after anything in between changed one of them."""

from __future__ import annotations

import pytest
import torch

import fls_kernels as fls
from fls_kernels.pruning.method import Recomputing, fingerprint
from fls_kernels.pruning.registry import PRUNERS
from tests.pruning.helpers import SmallNet, build, loader

RECOMPUTING = [k for k, cls in PRUNERS.items() if issubclass(cls.method_class, Recomputing)]


def _counted(kind: str, **kw):
    torch.manual_seed(0)
    pruner = build(kind, SmallNet(), **kw)
    calls = []
    original = pruner.method.recompute

    def recompute():
        calls.append(pruner.method.ctx.data.position)
        original()

    pruner.method.recompute = recompute
    return pruner, calls


def test_every_re_estimating_method_is_covered():
    assert {"kfac", "obd", "obert", "coreset"} <= set(RECOMPUTING)


@pytest.mark.parametrize("kind", RECOMPUTING)
def test_fit_then_prune_estimates_once_per_sub_step(kind):
    pruner, calls = _counted(kind)
    pruner.fit(loader())
    assert len(calls) == 1
    state = pruner.method.state_dict()
    pruner.prune(0.3, substeps=3)
    assert len(calls) == 3, "the first sub-step reads the fit's estimate"
    pruner.prune(0.5, substeps=2)  # masks changed since the last estimate: both sub-steps estimate
    assert len(calls) == 5
    assert state  # the fit's estimate was a state to reuse


@pytest.mark.parametrize(
    "change",
    ["optimizer step", "weight edit in no_grad", "edit through .data", "a buffer", "checkpoint loaded", "data read"],
)
def test_anything_changed_between_fit_and_prune_is_estimated_afresh(change):
    pruner, calls = _counted("kfac")
    model = pruner.model
    pruner.fit(loader())
    if change == "optimizer step":
        x, y = loader()[0]
        torch.nn.functional.cross_entropy(model(x), y).backward()
        torch.optim.SGD(model.parameters(), lr=1e-3).step()
    elif change == "weight edit in no_grad":
        with torch.no_grad():
            model.fc1.weight[0, 0] += 1e-6
    elif change == "edit through .data":
        model.fc2.weight.data[1, 2] *= 1.5  # .data does not bump the version counter
    elif change == "a buffer":
        model.register_buffer("scale", torch.ones(3))
        pruner.fit(loader())  # a fit now: the buffer is part of what it saw
        assert len(calls) == 2
        model.scale[1] = 2.0
    elif change == "checkpoint loaded":
        pruner.load_state_dict(pruner.state_dict())  # the data stream restarts at its saved position
    else:
        next(pruner.ctx.data.stream)
    before = len(calls)
    pruner.prune(0.4, substeps=2)
    assert len(calls) == before + 2


def test_the_first_sub_step_prunes_with_the_fit_estimate():
    """A fit then ``prune(s)`` prunes exactly as a pruner whose first sub-step re-estimates with the fit's labels
    and batches (the generator and the stream rewound to where the fit started)."""
    runs = []
    for rewind in (False, True):
        torch.manual_seed(0)
        model = SmallNet()
        pruner = fls.KFACPruner(model, "categorical", stat_batches=2, update="adaptive", seed=3)
        pruner.fit(loader())
        if rewind:
            pruner.method.generator.manual_seed(3)
            pruner.ctx.data.resume_at(0)
        pruner.prune(0.5)
        runs.append((dict(pruner.masks.items()), {k: v.clone() for k, v in model.state_dict().items()}))
    (masks, weights), (masks2, weights2) = runs
    assert all(torch.equal(masks[k], masks2[k]) for k in masks)
    assert all(torch.equal(weights[k], weights2[k]) for k in weights)


def test_fingerprint_sees_contents_and_never_equates_nan():
    a, b = torch.randn(4, 5), torch.ones(3, dtype=torch.bool)
    first = fingerprint([a, b])
    assert torch.equal(first, fingerprint([a.clone(), b.clone()]))
    a[2, 3] += 1e-3
    assert not torch.equal(first, fingerprint([a, b]))
    b[0] = False
    assert not torch.equal(fingerprint([a, torch.ones(3, dtype=torch.bool)]), fingerprint([a, b]))
    a[0, 0] = float("nan")
    assert not torch.equal(fingerprint([a]), fingerprint([a]))
