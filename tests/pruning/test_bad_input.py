"""Bad input raises a clear error naming the argument and leaves the model bit-identical."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import fls_kernels as fls
from tests.pruning.helpers import KINDS, SmallNet, assert_identical, loader, make, snapshot


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize(
    "sparsity,error",
    [
        (-0.1, ValueError),
        (1.0, ValueError),
        (1.5, ValueError),
        (float("nan"), TypeError),
        ("0.5", TypeError),
        (True, TypeError),
        ({"nope": 0.5}, ValueError),
        ({"fc1": 2.0}, ValueError),
    ],
    ids=["negative", "one", "above-one", "nan", "string", "bool", "unknown-layer", "layer-above-one"],
)
def test_bad_sparsity(kind, sparsity, error):
    model = SmallNet()
    pruner = make(kind, model)
    before = snapshot(model)
    with pytest.raises(error, match="sparsity"):
        pruner.prune(sparsity)
    assert_identical(model, before)
    assert pruner.num_pruned() == 0


@pytest.mark.parametrize("kind", KINDS)
def test_sparsity_below_current_and_bad_substeps(kind):
    model = SmallNet()
    pruner = make(kind, model)
    pruner.prune(0.5)
    before = snapshot(model)
    with pytest.raises(ValueError, match="sparsity: 0.3 (for layer .* )?is below"):
        pruner.prune(0.3)
    with pytest.raises(ValueError, match="substeps"):
        pruner.prune(0.6, substeps=0)
    assert_identical(model, before)


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("bad", [float("nan"), float("inf")], ids=["nan", "inf"])
def test_non_finite_weights(kind, bad):
    model = SmallNet()
    pruner = make(kind, model)
    with torch.no_grad():
        model.fc1.weight[3, 4] = bad
    before = snapshot(model)
    with pytest.raises(ValueError, match=r"model: parameter 'fc1.weight' contains NaN or Inf"):
        pruner.prune(0.5)
    assert_identical(model, before)


@pytest.mark.parametrize("kind", [fls.FishLegPruner, fls.MagnitudePruner])
def test_no_prunable_layers(kind):
    with pytest.raises(ValueError, match="model: no prunable layers"):
        kind(nn.Sequential(nn.ReLU(), nn.LayerNorm(3)))
    with pytest.raises(ValueError, match=r"include: pattern 'nothing\.\*' matches no layer"):
        kind(SmallNet(), include="nothing.*")
    with pytest.raises(TypeError, match="model"):
        kind("not a model")


def test_empty_or_bad_loader():
    model = SmallNet()
    pruner = fls.FishLegPruner(model)
    before = snapshot(model)
    with pytest.raises(ValueError, match="loader: yielded no batches"):
        pruner.fit([], steps=3)
    with pytest.raises(TypeError, match="loader"):
        pruner.fit(None, steps=3)
    assert not pruner.fitted
    with pytest.raises(RuntimeError, match="fit"):
        pruner.prune(0.5)
    assert_identical(model, before)


def test_mismatched_devices():
    model = SmallNet()
    model.fc2.to("meta")
    with pytest.raises(ValueError, match="model: prunable layers are on several devices"):
        fls.FishLegPruner(model)
    model = SmallNet()
    pruner = fls.FishLegPruner(model)
    before = snapshot(model)
    with pytest.raises(ValueError, match="loader: batch is on meta but the model is on cpu"):
        pruner.fit([(torch.randn(4, 1, 6, 6, device="meta"), None)], steps=2)
    assert_identical(model, before)


def test_bad_constructor_arguments_leave_no_hooks():
    model = SmallNet()
    for kwargs, match in [
        (dict(damping=-1.0), "damping"),
        (dict(init="svd"), "init"),
        (dict(precision="fp8"), "precision"),
        (dict(likelihood="poisson"), "likelihood"),
        (dict(refine_steps=-1), "refine_steps"),
        (dict(allocation="random"), "allocation"),
        (dict(ignore=["("]), "ignore"),
        (dict(fvp_chunk=0), "fvp_chunk"),
        (dict(distributed=3), "distributed"),
        (dict(distributed="pipeline"), "distributed"),
        (dict(distributed=True), "distributed"),  # no process group initialised
    ]:
        with pytest.raises((ValueError, TypeError), match=match):
            fls.FishLegPruner(model, **kwargs)
    assert not model.fc1.weight._backward_hooks
    assert not model._load_state_dict_post_hooks


@pytest.mark.parametrize("kind", KINDS)
def test_failure_mid_step_rolls_back_everything(kind, monkeypatch):
    model = SmallNet()
    pruner = make(kind, model)
    pruner.prune(0.3)
    before, masks, state = snapshot(model), {k: m.clone() for k, m in pruner.masks.items()}, pruner.state_dict()
    calls = {"n": 0}
    hook = "prune_layer" if pruner.method.layerwise else "update"  # layerwise methods update in prune_layer
    original = getattr(type(pruner.method), hook)

    def flaky(self, *args):
        calls["n"] += 1
        if calls["n"] == 3:
            raise RuntimeError("boom")
        return original(self, *args)

    monkeypatch.setattr(type(pruner.method), hook, flaky)
    with pytest.raises(RuntimeError, match="boom"):
        pruner.prune(0.8, substeps=2)
    assert_identical(model, before)
    for k, m in masks.items():
        assert torch.equal(pruner.masks[k], m)
    after = pruner.state_dict()["state"]
    if kind == "fls":
        for k, v in state["state"]["blocks"].items():
            assert torch.equal(after["blocks"][k], v)


def test_mismatched_state_dict():
    model = SmallNet()
    pruner = make("fls", model)
    before = snapshot(model)
    with pytest.raises(ValueError, match="state_dict: saved by MagnitudePruner"):
        pruner.load_state_dict(make("magnitude", SmallNet()).state_dict())
    other = fls.MagnitudePruner(SmallNet(), ignore=["fc2"])
    with pytest.raises(ValueError, match="state_dict: layers"):
        fls.MagnitudePruner(SmallNet()).load_state_dict(other.state_dict())
    with pytest.raises(ValueError, match="state_dict"):
        pruner.load_state_dict({"foo": 1})
    assert_identical(model, before)


def test_fit_loader_tensor_and_mapping_batches():
    class Keyword(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(3, 2)

        def forward(self, inputs):
            return self.fc(inputs)

    pruner = fls.FishLegPruner(Keyword(), init_batches=1)
    pruner.fit([{"inputs": torch.randn(4, 3)}], steps=2)
    pruner = fls.FishLegPruner(Keyword(), init_batches=1)
    pruner.fit([torch.randn(4, 3)], steps=2)
    assert len(pruner.method.fitter.history) == 2
    assert loader  # shared helper in use
