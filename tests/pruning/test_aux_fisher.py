"""FishLeg's aux steps on captured layer-wise Fisher blocks (``aux_fisher="layerwise"``)."""

from __future__ import annotations

import pytest
import torch

import fls_kernels as fls
from tests.pruning.helpers import SmallNet, expected_zeros, loader


@pytest.mark.parametrize("aux_batches", [None, 1])
def test_layerwise_aux_prunes_to_the_exact_sparsity(aux_batches):
    torch.manual_seed(0)
    model = SmallNet()
    pruner = fls.FishLegPruner(
        model, "categorical", init_batches=2, refine_steps=2, aux_fisher="layerwise", aux_batches=aux_batches
    )
    pruner.fit(loader(), steps=4)
    assert pruner.method._captures is not None and pruner.method.memory()["captures"] > 0
    pruner.prune(0.6)
    zeros = sum(int((v.weight == 0).sum()) for v in pruner.views)
    assert zeros == expected_zeros(pruner, 0.6)
    assert all(torch.isfinite(p).all() for p in model.parameters())
    assert pruner.method._captures is None, "captures at the old weights must not survive a prune"


def test_layerwise_aux_gradual_steps_and_state_round_trip():
    torch.manual_seed(1)
    model, data = SmallNet(), loader(batches=4, seed=5)
    schedule = fls.CubicSchedule(0.3, 0.8, start=0, end=6, every=2)
    kwargs = dict(
        init_batches=2, refine_steps=2, substeps=2, gradual_aux_steps=2, aux_fisher="layerwise", aux_batches=1
    )
    pruner = fls.FishLegPruner(model, schedule=schedule, **kwargs)
    pruner.fit(data, steps=3)
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    for t in range(8):
        x, y = data[t % len(data)]
        opt.zero_grad()
        torch.nn.functional.cross_entropy(model(x), y).backward()
        opt.step()
        pruner.step()
    zeros = sum(int((v.weight == 0).sum()) for v in pruner.views)
    assert zeros == expected_zeros(pruner, 0.8)
    assert all(torch.isfinite(p).all() for p in model.parameters())
    other = fls.FishLegPruner(SmallNet(), schedule=schedule, **kwargs)
    other.fit(data, steps=1)
    other.load_state_dict(pruner.state_dict())
    assert other.method._captures is None, "captures are not checkpointed"


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(aux_fisher="blockwise"), "aux_fisher"),
        (dict(aux_batches=0), "aux_batches"),
        (dict(aux_batches=1.5), "aux_batches"),
    ],
)
def test_aux_options_are_validated(kwargs, match):
    with pytest.raises((ValueError, TypeError), match=match):
        fls.FishLegPruner(SmallNet(), "categorical", **kwargs)


def test_compiled_aux_steps_prune_like_eager_ones():
    results = []
    for mode in (None, "default"):
        torch.manual_seed(0)
        model = SmallNet()
        pruner = fls.FishLegPruner(model, "categorical", init_batches=2, refine_steps=2, aux_compile=mode)
        pruner.fit(loader(), steps=4)
        pruner.prune(0.6, substeps=2)
        assert sum(int((v.weight == 0).sum()) for v in pruner.views) == expected_zeros(pruner, 0.6)
        results.append(pruner.method.fitter.history)
    assert results[1] == pytest.approx(results[0], rel=1e-4)


def test_aux_compile_is_validated_before_anything_changes():
    model = SmallNet()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(ValueError, match="aux_compile"):
        fls.FishLegPruner(model, "categorical", aux_compile="fastest")
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())
