"""The main job: a small CNN on scikit-learn's handwritten digits, pruned one-shot by FLS and by magnitude.

Trains the CNN (two 3×3 convs and a linear head), fits Q once per seed, then for each sparsity prunes a
fresh copy of the trained model in K sub-steps (no fine-tuning) and measures test accuracy. Prints a
mean ± std table over seeds and writes ``results.csv``, ``results.md`` and ``accuracy.png``.
No download: the digits ship with scikit-learn.
"""

from __future__ import annotations

import copy
import csv
import logging
import statistics
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import Tensor, nn

from fls_kernels.pruning import FishLegPruner, MagnitudePruner

log = logging.getLogger("fls_kernels.demo")

SPARSITIES = (0.5, 0.7, 0.8, 0.9, 0.95)
SEEDS = (0, 1, 2)


class DigitsCNN(nn.Module):
    """conv 3×3 (1→c1) → ReLU → conv 3×3 (c1→c2) → ReLU → max-pool 2 → linear (16·c2→10).

    The default (8, 16) is compact (3 800 prunable weights), so pruning it hurts and curvature matters.
    """

    def __init__(self, c1: int = 8, c2: int = 16) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, c1, 3, padding=1)
        self.conv2 = nn.Conv2d(c1, c2, 3, padding=1)
        self.pool = nn.MaxPool2d(2)
        self.fc = nn.Linear(c2 * 4 * 4, 10)

    def forward(self, x: Tensor) -> Tensor:
        x = torch.relu(self.conv1(x))
        x = self.pool(torch.relu(self.conv2(x)))
        return self.fc(x.flatten(1))


@dataclass
class Digits:
    x_train: Tensor
    y_train: Tensor
    x_test: Tensor
    y_test: Tensor


def load_digits(seed: int = 0, test_fraction: float = 0.25) -> Digits:
    """The 1 797 8×8 digits scaled to [0, 1], split (stratified by a seeded permutation) into train/test."""
    from sklearn.datasets import load_digits as sk_load

    data = sk_load()
    x = torch.tensor(data.images, dtype=torch.float32).unsqueeze(1) / 16.0
    y = torch.tensor(data.target, dtype=torch.long)
    g = torch.Generator().manual_seed(seed)
    test = torch.zeros(len(y), dtype=torch.bool)
    for c in range(10):
        idx = (y == c).nonzero().squeeze(1)
        idx = idx[torch.randperm(len(idx), generator=g)]
        test[idx[: round(len(idx) * test_fraction)]] = True
    return Digits(x[~test], y[~test], x[test], y[test])


def batches(x: Tensor, y: Tensor, batch_size: int, seed: int) -> list[tuple[Tensor, Tensor]]:
    """One shuffled epoch of (x, y) mini-batches."""
    order = torch.randperm(len(x), generator=torch.Generator().manual_seed(seed))
    return [(x[order[i : i + batch_size]], y[order[i : i + batch_size]]) for i in range(0, len(x), batch_size)]


def train(
    model: nn.Module, data: Digits, *, epochs: int = 30, lr: float = 3e-3, seed: int = 0, progress: bool = False
) -> nn.Module:
    """Adam on cross-entropy (``progress``: a tqdm bar over the epochs)."""
    from tqdm.auto import tqdm

    opt = torch.optim.Adam(model.parameters(), lr=lr)
    model.train()
    for epoch in tqdm(range(epochs), desc="train", unit="epoch", disable=not progress, leave=False):
        for x, y in batches(data.x_train, data.y_train, 64, seed * 1000 + epoch):
            opt.zero_grad()
            nn.functional.cross_entropy(model(x), y).backward()
            opt.step()
    model.eval()
    return model


@torch.no_grad()
def accuracy(model: nn.Module, x: Tensor, y: Tensor) -> float:
    model.eval()
    return (model(x).argmax(1) == y).float().mean().item()


@dataclass
class DemoConfig:
    """Budgets of the demo (defaults: the full job, a few minutes on 2 CPU cores)."""

    sparsities: tuple[float, ...] = SPARSITIES
    seeds: tuple[int, ...] = SEEDS
    fit_steps: int = 1500
    substeps: int = 16
    refine_steps: int = 40
    damping: float | None = None  # None: the pruner's default, γ = mean diag F̂
    batch_size: int = 128
    train_epochs: int = 30
    progress: bool = False


@dataclass
class DemoResult:
    config: DemoConfig
    dense: list[float] = field(default_factory=list)
    #: (method, sparsity) → accuracy per seed
    accuracy: dict[tuple[str, float], list[float]] = field(default_factory=dict)
    seconds: float = 0.0


#: Seconds per unit of work on 2 CPU cores (measured with the default budgets), for :func:`estimate_seconds`.
_COST = dict(epoch=0.1, aux_step=0.009, refine_step=0.007, substep=0.02)


def estimate_seconds(config: DemoConfig) -> float:
    """Roughly how long :func:`run` takes with ``config`` on 2 CPU cores (the defaults: a few minutes)."""
    c = _COST
    per_sparsity = config.substeps * (c["substep"] + config.refine_steps * c["refine_step"])
    per_seed = (
        c["epoch"] * config.train_epochs + c["aux_step"] * config.fit_steps + per_sparsity * len(config.sparsities)
    )
    return per_seed * len(config.seeds)


def format_seconds(seconds: float) -> str:
    """``42 s``, ``3.5 min``."""
    return f"{seconds:.0f} s" if seconds < 90 else f"{seconds / 60:.1f} min"


def run(config: DemoConfig | None = None) -> DemoResult:
    """Train, fit and prune for every seed and sparsity; return the accuracies.

    Logs each stage as it starts (``fls_kernels.demo``, INFO) with the time the previous one took and, after
    each seed, the time left; ``config.progress`` adds tqdm bars within the stages.
    """
    from tqdm.auto import tqdm

    config = config or DemoConfig()
    result = DemoResult(config)
    start = time.perf_counter()
    n = len(config.seeds)
    for i, seed in enumerate(config.seeds):
        seed_start = stage = time.perf_counter()
        log.info("seed %d (%d/%d): training the CNN, %d epochs", seed, i + 1, n, config.train_epochs)
        torch.manual_seed(seed)
        data = load_digits(seed)
        dense = train(DigitsCNN(), data, epochs=config.train_epochs, seed=seed, progress=config.progress)
        result.dense.append(accuracy(dense, data.x_test, data.y_test))
        log.info(
            "seed %d: trained in %.0f s (dense accuracy %.3f); fitting Q, %d aux steps",
            seed,
            time.perf_counter() - stage,
            result.dense[-1],
            config.fit_steps,
        )
        stage = time.perf_counter()
        calib = batches(data.x_train, data.y_train, config.batch_size, seed)
        fitted = copy.deepcopy(dense)
        pruner = FishLegPruner(
            fitted,
            "categorical",
            damping=config.damping,
            init="diagonal",
            refine_steps=config.refine_steps,
            seed=seed,
            progress=config.progress,
        )
        pruner.fit(calib, steps=config.fit_steps)
        state, weights = pruner.state_dict(), copy.deepcopy(fitted.state_dict())
        log.info(
            "seed %d: Q fitted in %.0f s; pruning at %s, %d FLS sub-steps of %d refinement steps each",
            seed,
            time.perf_counter() - stage,
            ", ".join(f"{s:.0%}" for s in config.sparsities),
            config.substeps,
            config.refine_steps,
        )
        for s in tqdm(config.sparsities, desc="prune", unit="sparsity", disable=not config.progress, leave=False):
            stage = time.perf_counter()
            pruner.load_state_dict(state)  # masks back to all-alive first: reloading weights re-applies masks
            fitted.load_state_dict(weights)
            pruner.prune(s, substeps=config.substeps)
            result.accuracy.setdefault(("FLS", s), []).append(accuracy(fitted, data.x_test, data.y_test))
            baseline = copy.deepcopy(dense)
            MagnitudePruner(baseline).prune(s)
            result.accuracy.setdefault(("magnitude", s), []).append(accuracy(baseline, data.x_test, data.y_test))
            log.info(
                "seed %d sparsity %.2f: FLS %.3f magnitude %.3f (%.0f s)",
                seed,
                s,
                result.accuracy[("FLS", s)][-1],
                result.accuracy[("magnitude", s)][-1],
                time.perf_counter() - stage,
            )
        elapsed = time.perf_counter() - start
        left = elapsed / (i + 1) * (n - i - 1)
        log.info(
            "seed %d done in %s (%d/%d); %s",
            seed,
            format_seconds(time.perf_counter() - seed_start),
            i + 1,
            n,
            f"about {format_seconds(left)} left" if left else f"all seeds in {format_seconds(elapsed)}",
        )
    result.seconds = time.perf_counter() - start
    return result


def _mean_std(values: list[float]) -> tuple[float, float]:
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)


def table(result: DemoResult) -> str:
    """Markdown table: sparsity × method, mean ± std accuracy over seeds."""
    dm, ds = _mean_std(result.dense)
    lines = [
        f"Dense accuracy {dm:.3f} ± {ds:.3f} ({len(result.dense)} seeds); one-shot, "
        f"{result.config.substeps} FLS sub-steps, no fine-tuning.",
        "",
        "| sparsity | FLS | magnitude | FLS − magnitude |",
        "|---:|---:|---:|---:|",
    ]
    for s in result.config.sparsities:
        fm, fs = _mean_std(result.accuracy[("FLS", s)])
        mm, ms = _mean_std(result.accuracy[("magnitude", s)])
        lines.append(f"| {s:.0%} | {fm:.3f} ± {fs:.3f} | {mm:.3f} ± {ms:.3f} | {fm - mm:+.3f} |")
    return "\n".join(lines)


def write(result: DemoResult, out_dir: str | Path) -> list[Path]:
    """results.csv, results.md and accuracy.png under ``out_dir``."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    with open(out / "results.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["method", "sparsity", "seed", "accuracy"])
        for (method, s), accs in sorted(result.accuracy.items()):
            for seed, acc in zip(result.config.seeds, accs):
                w.writerow([method, s, seed, f"{acc:.4f}"])
    (out / "results.md").write_text(table(result) + "\n")
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 3.5))
    for method in ("FLS", "magnitude"):
        stats = [_mean_std(result.accuracy[(method, s)]) for s in result.config.sparsities]
        ax.errorbar(
            [100 * s for s in result.config.sparsities],
            [m for m, _ in stats],
            yerr=[e for _, e in stats],
            marker="o",
            capsize=3,
            label=method,
        )
    ax.axhline(statistics.fmean(result.dense), color="gray", ls="--", lw=1, label="dense")
    ax.set_xlabel("sparsity (%)")
    ax.set_ylabel("test accuracy")
    ax.set_title("Digits CNN, one-shot pruning")
    ax.legend()
    fig.tight_layout()
    fig.savefig(out / "accuracy.png", dpi=120)
    plt.close(fig)
    return [out / "results.csv", out / "results.md", out / "accuracy.png"]
