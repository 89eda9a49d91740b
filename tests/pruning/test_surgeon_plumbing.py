"""FishLegPruner's step equals the dense OBS formulas applied to each layer's matrix view (bias column included)."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

import fls_kernels as fls
from fls_reference.dense import kron_matrix


class Mixed(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(2, 3, 3, stride=2, padding=1, bias=True)
        self.fc = nn.Linear(3 * 3 * 3, 4, bias=False)

    def forward(self, x):
        return self.fc(torch.tanh(self.conv(x)).flatten(1))


def test_one_step_matches_dense_obs_per_layer():
    torch.manual_seed(0)
    model = Mixed().double()
    pruner = fls.FishLegPruner(model, "categorical", init_batches=1, refine_steps=0)
    pruner.fit([torch.randn(8, 2, 5, 5, dtype=torch.float64)], steps=3)
    with torch.no_grad():  # an arbitrary λ, so the test does not depend on the fit
        for b in pruner.method.blocks:
            b.R.add_(torch.randn_like(b.R) / 4)
            b.L.add_(torch.randn_like(b.L) / 4)
            b.A.uniform_(0.5, 1.5)
    views = pruner.views
    before = [v.matrix() for v in views]
    Qs = [kron_matrix(b.A.detach(), *b.grams()) for b in pruner.method.blocks]
    # Expected: global selection of the smallest θ²/(2 Q_qq) over weight columns only.
    scores = []
    for v, W, Q in zip(views, before, Qs):
        rho = (W.reshape(-1) ** 2 / (2 * Q.diagonal())).reshape(v.m, v.n)[:, : v.n_weight]
        scores.append(rho.reshape(-1))
    d = sum(s.numel() for s in scores)
    k = math.ceil(0.4 * d)
    flat = torch.cat(scores)
    chosen = torch.zeros(d, dtype=torch.bool)
    chosen[torch.sort(flat, stable=True).indices[:k]] = True
    offset = 0
    pruner.prune(0.4)
    for v, W, Q in zip(views, before, Qs):
        sel = chosen[offset : offset + v.m * v.n_weight].reshape(v.m, v.n_weight)
        offset += v.m * v.n_weight
        prune = torch.zeros(v.m, v.n, dtype=torch.bool)
        prune[:, : v.n_weight] = sel
        theta = W.reshape(-1)
        z = torch.where(prune.reshape(-1), theta / Q.diagonal(), torch.zeros_like(theta))
        expected = torch.where(~prune.reshape(-1), theta - Q @ z, torch.zeros_like(theta)).reshape(v.m, v.n)
        torch.testing.assert_close(v.matrix(), expected, rtol=1e-10, atol=1e-12)
        assert torch.equal(pruner.masks[v.name], ~sel.reshape(v.weight.shape))
        if v.has_bias:
            assert not torch.equal(v.matrix()[:, -1], W[:, -1]), "the bias is updated, never pruned"


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_model_dtype_and_device_are_kept(dtype):
    model = Mixed().to(dtype)
    pruner = fls.FishLegPruner(model, init_batches=1, refine_steps=1)
    pruner.fit([torch.randn(4, 2, 5, 5, dtype=dtype)], steps=2)
    pruner.prune(0.5, substeps=2)
    assert all(p.dtype == dtype and p.device.type == "cpu" for p in model.parameters())
    assert all(b.A.dtype == dtype for b in pruner.method.blocks)
