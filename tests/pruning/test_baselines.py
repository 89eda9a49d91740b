"""Each baseline against its own definition, computed by brute force."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

import fls_kernels as fls
from fls_kernels.curvature import Categorical, ModelCurvature
from fls_kernels.layers import find_layers
from fls_reference.dense import obs_single
from tests.dense import q_matrix
from tests.pruning.helpers import SmallNet, loader

F64 = torch.float64


def test_obert_woodbury_inverse_scores_and_update_match_dense_blocks():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(7, 3)).double()
    data = [(torch.randn(10, 7, dtype=F64), torch.randint(0, 3, (10,))) for _ in range(2)]
    pruner = fls.OBERTPruner(model, damping=0.05, num_grads=20, block_size=8, grad_chunk=7)
    pruner.fit(data)
    # Brute force: per-sample gradients of the nll with the true labels, blocks of 8 of the flat weight.
    grads = []
    for x, y in data:
        for b in range(10):
            model.zero_grad()
            torch.nn.functional.cross_entropy(model(x[b : b + 1]), y[b : b + 1], reduction="sum").backward()
            grads.append(model[0].weight.grad.reshape(-1).clone())
    G = torch.stack(grads)  # [20, 21]
    theta = model[0].weight.detach().reshape(-1).clone()
    d = theta.numel()
    blocks = [list(range(s, min(s + 8, d))) for s in range(0, d, 8)]
    finv = torch.zeros(d, d, dtype=F64)
    for idx in blocks:
        F = 0.05 * torch.eye(len(idx), dtype=F64) + G[:, idx].T @ G[:, idx] / 20
        finv[idx[0] : idx[-1] + 1, idx[0] : idx[-1] + 1] = torch.linalg.inv(F)
    got = torch.block_diag(*pruner.method.finv[0])[:d, :d]
    torch.testing.assert_close(got, finv)
    # One weight removed: the OBS score and update of that block.
    scores = (theta**2 / (2 * finv.diagonal())).reshape(3, 7)
    q = int(scores.argmin())
    _, delta = obs_single(theta, finv, q)
    pruner.prune(1 / 21)
    expected = theta + delta
    expected[q] = 0
    torch.testing.assert_close(model[0].weight.detach().reshape(-1), expected)


def test_kfac_blocks_are_the_damped_inverted_factors():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(5, 3)).double()
    x = torch.randn(64, 5, dtype=F64)
    pruner = fls.KFACPruner(model, damping=0.1, stat_batches=1, seed=4)
    pruner.fit([x])
    curvature = ModelCurvature(model, find_layers(model), Categorical())
    s = curvature.statistics(iter([x]), 1, kfac=True, generator=torch.Generator().manual_seed(4))[0]
    pi = math.sqrt((s.act_cov.trace() / 6) / (s.grad_cov.trace() / 3))
    G_R = torch.linalg.inv(s.grad_cov + 0.1**0.5 / pi * torch.eye(3, dtype=F64))
    G_L = torch.linalg.inv(s.act_cov + pi * 0.1**0.5 * torch.eye(6, dtype=F64))
    with torch.no_grad():
        torch.testing.assert_close(q_matrix(pruner.method.blocks[0]), torch.kron(G_R, G_L))


def test_obd_scores_are_half_damped_fisher_times_theta_squared():
    model = SmallNet()
    pruner = fls.OBDPruner(model, damping=0.01, stat_batches=2)
    pruner.fit(loader())
    for i, v in enumerate(pruner.views):
        W = v.matrix()
        alive = pruner.masks.full(i)
        expected = 0.5 * (pruner.method.fisher_diag[i][:, : v.n_weight] + 0.01) * W[:, : v.n_weight] ** 2
        torch.testing.assert_close(pruner.method.scores(i, W, alive), expected)


def test_coreset_sensitivity_and_reweighting_follow_the_definitions():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 3))
    x = torch.randn(9, 4)
    pruner = fls.CoresetPruner(model, calib_batches=1, seed=1)
    pruner.fit([x])
    W = torch.cat([model[0].weight, model[0].bias[:, None]], 1).detach().double()
    a = torch.cat([x, torch.ones(9, 1)], 1).double()
    contrib = (W[None] * a[:, None, :]).abs()  # [b, i, j]
    sens = (contrib / contrib.sum(-1, keepdim=True)).amax(0)[:, :4]
    torch.testing.assert_close(pruner.method.sensitivity[0].double(), sens, rtol=1e-6, atol=1e-9)
    before = model[0].weight.detach().clone()
    s = pruner.method.sensitivity[0]
    u = 1 - torch.rand(s.shape, generator=torch.Generator().manual_seed(1), dtype=s.dtype)
    q = s / u
    pruned = torch.zeros(12, dtype=torch.bool)
    pruned[torch.sort(q.reshape(-1), stable=True).indices[:6]] = True
    pruned = pruned.reshape(3, 4)
    tau = q[pruned].max()
    pruner.prune(0.5)
    assert torch.equal(pruner.masks["0"], ~pruned)
    expected = torch.where(pruned, torch.zeros_like(before), before * (tau / s).clamp_min(1))
    torch.testing.assert_close(model[0].weight.detach(), expected)


def test_obert_sampled_fisher_needs_no_labels_and_empirical_does():
    model = nn.Sequential(nn.Linear(6, 4))
    unlabeled = [torch.randn(8, 6) for _ in range(2)]
    pruner = fls.OBERTPruner(model, "gaussian", fisher="sampled", num_grads=12, block_size=5)
    pruner.fit(unlabeled)
    pruner.prune(0.5)
    assert pruner.num_pruned() == 12
    with pytest.raises(ValueError, match="labelled batches"):
        fls.OBERTPruner(nn.Sequential(nn.Linear(6, 4)), num_grads=4).fit(unlabeled)
    with pytest.raises(ValueError, match="fisher"):
        fls.OBERTPruner(model, fisher="exact")
