"""Small models and loaders shared by the pruning tests."""

from __future__ import annotations

import math

import torch
from torch import nn

from fls_kernels.pruning.method import has_option
from fls_kernels.pruning.registry import PRUNERS


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


#: every registered method: a new one is parametrised into the tests by its registry line alone
KINDS = list(PRUNERS)
#: methods that prune each layer to its own budget (uniform allocation by default)
LAYERWISE = tuple(k for k, cls in PRUNERS.items() if cls.method_class.layerwise)


def make(kind: str, model: nn.Module, **kwargs):
    """A pruner of ``kind`` (see KINDS), fitted briefly on :func:`loader`."""
    pruner = build(kind, model, **kwargs)
    pruner.fit(loader(), steps=5)
    return pruner


def build(kind: str, model: nn.Module, **kwargs):
    """A pruner of ``kind`` (see KINDS) with its method's quick options (small budgets) under ``kwargs``, not
    fitted."""
    cls = PRUNERS[kind]
    return cls(model, **{**cls.method_class.quick_options, **kwargs})


def takes(kind: str, option: str) -> bool:
    """Whether the pruner of ``kind`` has the option ``option`` (e.g. a likelihood: it reads the model's output)."""
    return has_option(PRUNERS[kind].method_class, option)


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
