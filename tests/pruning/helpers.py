"""Small models and loaders shared by the pruning tests."""

from __future__ import annotations

import math

import torch
from torch import nn

import fls_kernels as fls


class SmallNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(1, 4, 3, padding=1)
        self.fc1 = nn.Linear(4 * 6 * 6, 16)
        self.fc2 = nn.Linear(16, 5, bias=False)

    def forward(self, x):
        return self.fc2(torch.relu(self.fc1(torch.relu(self.conv(x)).flatten(1))))


class PatternNet(nn.Module):
    """Every layer's fan-in divisible by 4 and its fan-out by 4 (for N:M and block patterns)."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(4, 8, 1)
        self.fc1 = nn.Linear(8 * 6 * 6, 16)
        self.fc2 = nn.Linear(16, 8, bias=False)

    def forward(self, x):
        return self.fc2(torch.relu(self.fc1(torch.relu(self.conv(x)).flatten(1))))


def pattern_data(batches=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [(torch.randn(16, 4, 6, 6, generator=g), torch.randint(0, 8, (16,), generator=g)) for _ in range(batches)]


def loader(batches=3, size=16, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [
        (torch.randn(size, 1, 6, 6, generator=g), torch.randint(0, 5, (size,), generator=g)) for _ in range(batches)
    ]


KINDS = ["fls", "magnitude", "obd", "obert", "kfac", "coreset", "sparsegpt", "wanda"]
#: methods that prune each layer to its own budget (uniform allocation by default)
LAYERWISE = ("sparsegpt", "wanda")


def make(kind: str, model: nn.Module, **kwargs):
    """A pruner of ``kind`` (see KINDS), fitted briefly on :func:`loader`."""
    pruner = build(kind, model, **kwargs)
    pruner.fit(loader(), steps=5)
    return pruner


def build(kind: str, model: nn.Module, **kwargs):
    """A pruner of ``kind`` (see KINDS) with the small options of :func:`make`, not fitted."""
    return {
        "fls": lambda: fls.FishLegPruner(model, "categorical", refine_steps=2, init_batches=2, **kwargs),
        "magnitude": lambda: fls.MagnitudePruner(model, **kwargs),
        "obd": lambda: fls.OBDPruner(model, stat_batches=2, **kwargs),
        "obert": lambda: fls.OBERTPruner(model, num_grads=24, block_size=16, **kwargs),
        "kfac": lambda: fls.KFACPruner(model, stat_batches=2, **kwargs),
        "coreset": lambda: fls.CoresetPruner(model, calib_batches=2, **kwargs),
        "sparsegpt": lambda: fls.SparseGPTPruner(model, blocksize=16, **kwargs),
        "wanda": lambda: fls.WandaPruner(model, **kwargs),
    }[kind]()


def expected_zeros(pruner, sparsity: float) -> int:
    """⌈s·d⌉ over all layers for a global allocation, Σ_l ⌈s·d_l⌉ for a uniform one."""
    if pruner.ctx.allocation == "global":
        return math.ceil(round(sparsity * pruner.num_prunable(), 9))
    return sum(math.ceil(round(sparsity * v.m * v.n_weight, 9)) for v in pruner.views)


def prunable_weights(pruner):
    return {v.name: v.weight.detach() for v in pruner.views}


def snapshot(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def assert_identical(model: nn.Module, before: dict[str, torch.Tensor]) -> None:
    after = model.state_dict()
    assert after.keys() == before.keys()
    for k, v in before.items():
        a = after[k]
        assert torch.equal(torch.isnan(a), torch.isnan(v)), k
        assert torch.equal(a.nan_to_num(), v.nan_to_num()), f"{k} changed"
