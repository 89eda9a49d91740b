"""Short seeded pruning runs whose masks and weights are pinned (``pinned.pt``), so that a change to the
engine that alters what any method computes shows up as a failing test.

Regenerate (only when a change of results is intended, and say so in its commit):
``python -m tests.pruning.pinned [NAME ...]`` (only the named scenarios, the others kept as pinned).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

import fls_kernels as fls
from tests.pruning import helpers
from tests.pruning.helpers import PatternNet, SmallNet, loader

GOLDEN = Path(__file__).with_name("pinned.pt")


def pattern_data(batches: int = 3) -> list:
    return helpers.pattern_data(batches, seed=1)


def _record(pruner, model: nn.Module) -> dict:
    out = {
        "masks": {k: m.clone() for k, m in pruner.masks.items()},
        "weights": {k: v.detach().clone() for k, v in model.state_dict().items()},
        "sparsity": pruner.sparsity(),
    }
    state = pruner.state_dict()["state"]
    if isinstance(state, dict) and "history" in state:
        out["history"] = list(state["history"])
    return out


def fls_one_shot() -> dict:
    torch.manual_seed(0)
    model = SmallNet()
    pruner = fls.FishLegPruner(model, "categorical", init_batches=2, refine_steps=3, seed=3)
    pruner.fit(loader(), steps=12)
    pruner.prune(0.7, substeps=3)
    return _record(pruner, model)


def fls_kfac_two_four() -> dict:
    torch.manual_seed(1)
    model = PatternNet()
    pruner = fls.FishLegPruner(model, init="kfac", init_batches=2, refine_steps=2, pattern="2:4")
    pruner.fit(pattern_data(), steps=6)
    pruner.prune(substeps=2)
    return _record(pruner, model)


def fls_identity_uniform_float64() -> dict:
    torch.manual_seed(2)
    model = SmallNet().double()
    data = [(x.double(), y) for x, y in loader(seed=4)]
    pruner = fls.FishLegPruner(
        model, init="identity", precondition=False, allocation="uniform", init_batches=1, refine_steps=2, damping=0.1
    )
    pruner.fit(data, steps=8)
    pruner.prune(0.6, substeps=2)
    pruner.prune({"fc1": 0.8}, substeps=2)
    return _record(pruner, model)


def fls_gradual() -> dict:
    torch.manual_seed(3)
    model = SmallNet()
    data = loader(batches=4, seed=5)
    schedule = fls.CubicSchedule(0.3, 0.8, start=0, end=6, every=2)
    pruner = fls.FishLegPruner(model, schedule=schedule, substeps=2, init_batches=2, refine_steps=2)
    pruner.fit(data, steps=5)
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    for t in range(8):
        x, y = data[t % len(data)]
        opt.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        opt.step()
        pruner.step()
    return _record(pruner, model)


def fls_block_exact() -> dict:
    torch.manual_seed(4)
    model = PatternNet()
    pruner = fls.FishLegPruner(model, pattern="block2x2", block_score="exact", init_batches=1, refine_steps=2)
    pruner.fit(pattern_data(), steps=4)
    pruner.prune(0.5, substeps=2)
    return _record(pruner, model)


def _baseline(make: Callable[[nn.Module], object], sparsity: float = 0.6, substeps: int = 2, **prune) -> dict:
    torch.manual_seed(5)
    model = SmallNet()
    pruner = make(model)
    pruner.fit(loader(seed=6), steps=3)
    pruner.prune(sparsity, substeps=substeps, **prune)
    return _record(pruner, model)


SCENARIOS: dict[str, Callable[[], dict]] = {
    "fls_one_shot": fls_one_shot,
    "fls_kfac_two_four": fls_kfac_two_four,
    "fls_identity_uniform_float64": fls_identity_uniform_float64,
    "fls_gradual": fls_gradual,
    "fls_block_exact": fls_block_exact,
    "magnitude": lambda: _baseline(lambda m: fls.MagnitudePruner(m)),
    "obd": lambda: _baseline(lambda m: fls.OBDPruner(m, stat_batches=2)),
    "obert": lambda: _baseline(lambda m: fls.OBERTPruner(m, num_grads=24, block_size=16)),
    "obert_sampled_uniform": lambda: _baseline(
        lambda m: fls.OBERTPruner(m, num_grads=16, block_size=8, fisher="sampled", allocation="uniform")
    ),
    "kfac": lambda: _baseline(lambda m: fls.KFACPruner(m, stat_batches=2, relative_damping=0.1)),
    "coreset": lambda: _baseline(lambda m: fls.CoresetPruner(m, calib_batches=2)),
    "coreset_uniform": lambda: _baseline(lambda m: fls.CoresetPruner(m, calib_batches=2, allocation="uniform")),
}


def main(names: list[str]) -> None:
    unknown = set(names) - set(SCENARIOS)
    if unknown:
        raise SystemExit(f"unknown scenarios {sorted(unknown)}; choose from {list(SCENARIOS)}")
    kept = torch.load(GOLDEN, weights_only=True) if names and GOLDEN.exists() else {}
    torch.save({name: run() if not names or name in names else kept[name] for name, run in SCENARIOS.items()}, GOLDEN)
    print(f"wrote {GOLDEN} ({', '.join(names) if names else 'every scenario'})")


if __name__ == "__main__":
    import sys

    main(sys.argv[1:])
