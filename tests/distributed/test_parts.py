"""The pieces of distributed pruning that run in one process: shard-consistent sampling, owner assignment,
argument errors, and a one-rank group equal to no group at all."""

from __future__ import annotations

import tempfile

import pytest
import torch
import torch.distributed as dist
from torch import nn

import fls_kernels as fls
from fls_kernels.curvature.likelihoods import Bernoulli, Categorical, Gaussian
from fls_kernels.distributed import Distributed, assign_owners


@pytest.mark.parametrize("lik", [Categorical(), Bernoulli(), Gaussian(0.5)], ids=repr)
def test_shards_draw_the_targets_of_the_whole_batch(lik):
    out = torch.randn(11, 3, 4, dtype=torch.float64)
    whole = lik.sample(out, torch.Generator().manual_seed(3))
    parts = [lik.sample(out[a:b], torch.Generator().manual_seed(3), rows=(a, 11)) for a, b in ((0, 4), (4, 5), (5, 11))]
    torch.testing.assert_close(torch.cat(parts), whole, rtol=0, atol=0)


def test_categorical_samples_follow_the_softmax():
    logits = torch.tensor([[2.0, 0.0, -1.0, -30.0]]).repeat(40_000, 1)
    y = Categorical().sample(logits, torch.Generator().manual_seed(0))
    freq = torch.bincount(y, minlength=4).double() / len(y)
    p = torch.softmax(logits[0].double(), -1)
    assert torch.allclose(freq, p, atol=0.01), (freq, p)
    assert int(y.max()) < 4


def test_bernoulli_and_gaussian_samples_have_their_moments():
    gen = torch.Generator().manual_seed(1)
    y = Bernoulli().sample(torch.full((50_000,), 0.7), gen)
    assert abs(float(y.mean()) - float(torch.sigmoid(torch.tensor(0.7)))) < 0.01
    z = Gaussian(2.0).sample(torch.full((50_000,), 1.5), gen)
    assert abs(float(z.mean()) - 1.5) < 0.05 and abs(float(z.std()) - 2.0) < 0.05


def test_owners_balance_the_kronecker_cost():
    costs = [100.0, 90.0, 10.0, 10.0, 5.0, 80.0]
    owners = assign_owners(costs, 3)
    load = [sum(c for c, o in zip(costs, owners) if o == r) for r in range(3)]
    assert sorted(load) == [95.0, 100.0, 100.0]  # largest first onto the least loaded rank
    assert assign_owners(costs, 1) == [0] * 6
    assert assign_owners([1.0], 4) == [0]  # more ranks than layers: the others own nothing


def test_distributed_needs_an_initialised_group():
    if dist.is_initialized():
        pytest.skip("a process group is already initialised")
    with pytest.raises(ValueError, match="distributed: torch.distributed is not initialised"):
        fls.FishLegPruner(nn.Linear(4, 3), distributed=True)
    with pytest.raises(ValueError, match="distributed: mode must be one of"):
        Distributed("pipeline")
    with pytest.raises(TypeError, match="distributed"):
        fls.FishLegPruner(nn.Linear(4, 3), distributed=3)


@pytest.fixture
def one_rank_group():
    if dist.is_initialized():
        pytest.skip("a process group is already initialised")
    with tempfile.TemporaryDirectory() as tmp:
        dist.init_process_group("gloo", init_method=f"file://{tmp}/store", rank=0, world_size=1)
        try:
            yield
        finally:
            dist.destroy_process_group()


def _data():
    gen = torch.Generator().manual_seed(0)
    return [(torch.randn(10, 6, generator=gen), torch.randint(0, 4, (10,), generator=gen)) for _ in range(3)]


def _net():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(6, 8), nn.ReLU(), nn.Linear(8, 4))


@pytest.mark.parametrize("mode", ["replicated", "sharded"])
def test_one_rank_equals_no_group(one_rank_group, mode):
    results = []
    for distributed in (None, Distributed(mode)):
        net = _net()
        pruner = fls.FishLegPruner(net, distributed=distributed, refine_steps=3)
        losses = pruner.fit(_data(), steps=5)
        pruner.prune(0.5, substeps=2)
        results.append((losses, net.state_dict()))
    (l0, w0), (l1, w1) = results
    assert l0 == pytest.approx(l1, rel=1e-6)
    for k in w0:
        torch.testing.assert_close(w1[k], w0[k], rtol=1e-5, atol=1e-7)


def test_sharding_is_refused_by_methods_without_blocks(one_rank_group):
    with pytest.raises(ValueError, match="distributed: OBDPruner supports 'replicated' only"):
        fls.OBDPruner(_net(), distributed="sharded")
    fls.OBDPruner(_net(), distributed="replicated")  # fine


def test_layerwise_aux_fisher_is_refused_with_distributed(one_rank_group):
    net = _net()
    before = {k: v.clone() for k, v in net.state_dict().items()}
    with pytest.raises(ValueError, match="aux_fisher: 'layerwise' runs in one process"):
        fls.FishLegPruner(net, distributed="replicated", aux_fisher="layerwise")
    assert all(torch.equal(before[k], v) for k, v in net.state_dict().items())
    fls.FishLegPruner(_net(), distributed="replicated", aux_fisher="exact")  # fine
