"""N:M and block patterns for every pruner: validity, exactness, errors; the exact group OBS score/update."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

import fls_kernels as fls
from fls_reference.dense import kron_matrix
from tests.pruning.helpers import KINDS, LAYERWISE, PatternNet, assert_identical, build, pattern_data, snapshot


def data():
    return pattern_data(seed=0)


def fitted(kind, model, **kw):
    pruner = build(kind, model, **kw)
    pruner.fit(data(), steps=3)
    return pruner


@pytest.mark.parametrize("kind", KINDS)
def test_two_four_every_group_has_exactly_two_zeros(kind):
    model = PatternNet()
    pruner = fitted(kind, model, pattern="2:4")
    pruner.prune(substeps=2)  # default: N/M
    for v in pruner.views:
        w = v.matrix()[:, : v.n_weight]
        zeros = (w.reshape(v.m, -1, 4) == 0).sum(-1)
        assert (zeros == 2).all(), v.name
        assert torch.equal(pruner.masks[v.name].reshape(v.m, -1), w != 0)
    assert pruner.sparsity() == 0.5


@pytest.mark.parametrize("kind", ["fls", "magnitude"])
def test_n_m_in_whole_zeros_per_group(kind):
    model = PatternNet()
    pruner = fitted(kind, model, pattern="3:8", ignore=["conv"])
    pruner.prune(1 / 8)
    assert pruner.sparsity() == pytest.approx(1 / 8)
    pruner.prune(3 / 8, substeps=2)
    for v in pruner.views:
        zeros = (v.matrix()[:, : v.n_weight].reshape(v.m, -1, 8) == 0).sum(-1)
        assert (zeros == 3).all()
    before = snapshot(model)
    for bad, match in [(0.3, "j/8"), (0.5, "j/8"), ({"fc1": 0.25}, "one number"), (1 / 8, "below")]:
        with pytest.raises(ValueError, match=match):
            pruner.prune(bad)
    assert_identical(model, before)


@pytest.mark.parametrize("kind", [k for k in KINDS if k not in LAYERWISE])  # they refuse blocks
@pytest.mark.parametrize("pattern,rows,cols", [("block4x4", 4, 4), ("block1x4", 1, 4)])
def test_blocks_are_removed_whole_with_exact_counts(kind, pattern, rows, cols):
    model = PatternNet()
    pruner = fitted(kind, model, pattern=pattern)
    pruner.prune(0.6, substeps=2)
    units = 0
    for v in pruner.views:
        w = v.matrix()[:, : v.n_weight].reshape(v.m // rows, rows, v.n_weight // cols, cols)
        zero = (w == 0).all(3).all(1)
        some = (w == 0).any(3).any(1)
        assert torch.equal(zero, some), f"{v.name}: partially pruned block"
        units += int(zero.sum())
    total = pruner.num_prunable() // (rows * cols)
    assert units == math.ceil(0.6 * total)


def test_invalid_pattern_for_the_shape_leaves_the_model_untouched():
    model = nn.Sequential(nn.Linear(6, 4), nn.Linear(4, 3))
    before = snapshot(model)
    with pytest.raises(ValueError, match="pattern: layer '0' has 6 inputs, not divisible into groups of M=4"):
        fls.FishLegPruner(model, pattern="2:4")
    with pytest.raises(ValueError, match="pattern: layer '1' has a 3×4 weight matrix"):
        fls.MagnitudePruner(model, pattern="block2x2")
    for bad in ["4:4", "0:4", "2-4", "block0x2", "blockAxB"]:
        with pytest.raises(ValueError, match="pattern"):
            fls.MagnitudePruner(model, pattern=bad)
    assert_identical(model, before)
    assert not model[0].weight._backward_hooks
    fls.MagnitudePruner(model, pattern="2:4", ignore=["0"])  # leaving the layer out works


def test_exact_block_score_and_update_equal_dense_group_obs():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 4)).double()
    pruner = fls.FishLegPruner(model, init_batches=1, refine_steps=0, pattern="block2x4", block_score="exact")
    pruner.fit([torch.randn(6, 8, dtype=torch.float64)], steps=2)
    block = pruner.method.blocks[0]
    with torch.no_grad():
        block.R.add_(torch.randn_like(block.R) / 4)
        block.L.add_(torch.randn_like(block.L) / 4)
        block.A.uniform_(0.5, 1.5)
    view = pruner.views[0]
    W = view.matrix()
    Q = kron_matrix(block.A.detach(), *block.grams())
    n = view.n  # 9 columns: 8 weights + bias
    blocks = [[(i, j) for i in range(r, r + 2) for j in range(c, c + 4)] for r in (0, 2) for c in (0, 4)]
    index = [[i * n + j for i, j in b] for b in blocks]
    theta = W.reshape(-1)
    losses = [0.5 * theta[p] @ torch.linalg.solve(Q[p][:, p], theta[p]) for p in index]
    best = int(torch.stack(losses).argmin())
    pruner.prune(0.25)
    p = index[best]
    expected = theta - Q[:, p] @ torch.linalg.solve(Q[p][:, p], theta[p])
    expected[p] = 0
    torch.testing.assert_close(view.matrix().reshape(-1), expected)
    assert (view.matrix().reshape(-1)[p] == 0).all()


def test_a_dense_state_loads_across_patterns_but_a_pruned_one_does_not():
    model = PatternNet()
    unstructured = fitted("fls", model)
    dense_state = unstructured.state_dict()
    unstructured.prune(0.5)
    pruned_state = unstructured.state_dict()
    other = build("fls", PatternNet(), pattern="2:4")
    other.load_state_dict(dense_state)
    for a, b in zip(other.method.blocks.parameters(), unstructured.method.blocks.parameters()):
        assert a.shape == b.shape
    with pytest.raises(ValueError, match="state_dict: saved with pattern unstructured"):
        other.load_state_dict(pruned_state)
