"""``label_samples`` k: the curvature methods' statistics average k sampled labels per input (FLS's start, K-FAC,
OBD); the option is refused where it cannot apply (oBERT, FLS's layer-wise captures) and when it is not a positive
int, before the model is touched."""

from __future__ import annotations

import pytest
import torch

import fls_kernels as fls
from tests.pruning.helpers import SmallNet, assert_identical, loader, snapshot


@pytest.mark.parametrize("make", [fls.KFACPruner, fls.OBDPruner, fls.FishLegPruner])
def test_the_statistics_draw_k_labels_per_input(make, monkeypatch):
    seen = []
    original = fls.curvature.ModelCurvature.statistics

    def spy(self, *args, label_samples=1, **kwargs):
        seen.append(label_samples)
        return original(self, *args, label_samples=label_samples, **kwargs)

    monkeypatch.setattr(fls.curvature.ModelCurvature, "statistics", spy)
    torch.manual_seed(0)
    options = dict(init_batches=2, refine_steps=0) if make is fls.FishLegPruner else dict(stat_batches=2)
    pruner = make(SmallNet(), "categorical", label_samples=3, **options)
    pruner.fit(loader(), steps=0)
    pruner.prune(0.5, substeps=2)
    assert seen and set(seen) == {3}


def test_k_draws_are_the_statistics_of_each_batch_seen_k_times():
    """K-FAC with k = 2 over batches [x₁, x₂] builds the λ of k = 1 over [x₁, x₁, x₂, x₂] (same label draws)."""
    torch.manual_seed(0)
    model = SmallNet()
    data = loader(batches=2)
    blocks = []
    for k, batches in ((2, data), (1, [b for b in data for _ in range(2)])):
        m = SmallNet()
        m.load_state_dict(model.state_dict())
        pruner = fls.KFACPruner(m, "categorical", stat_batches=len(batches), label_samples=k, damping=0.1)
        pruner.fit(batches, steps=0)
        blocks.append([(b.R.detach().clone(), b.L.detach().clone()) for b in pruner.method.blocks])
    for (R, L), (R1, L1) in zip(*blocks):
        torch.testing.assert_close(R, R1, rtol=1e-4, atol=1e-6)
        torch.testing.assert_close(L, L1, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize(
    "make, kwargs, error",
    [
        (fls.KFACPruner, dict(label_samples=0), ValueError),
        (fls.KFACPruner, dict(label_samples=1.5), ValueError),
        (fls.OBDPruner, dict(label_samples=True), ValueError),
        (fls.FishLegPruner, dict(label_samples=2, aux_fisher="layerwise"), ValueError),
        (fls.OBERTPruner, dict(label_samples=2), TypeError),
    ],
)
def test_bad_label_samples_are_refused_and_the_model_untouched(make, kwargs, error):
    model = SmallNet()
    before = snapshot(model)
    with pytest.raises(error, match="label_samples"):
        make(model, "categorical", **kwargs)
    assert_identical(model, before)
