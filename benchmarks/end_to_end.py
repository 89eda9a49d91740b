"""Whole-model one-shot FLS prune (fit + K sub-steps) per backend, with the time split into statistics, FVP,
Q products, scoring, selection and updates (:mod:`fls_kernels.timing`).

``python -m benchmarks e2e [--device cpu|cuda] [--model digits|mlp] [--backends ...]``
"""

from __future__ import annotations

import copy
import csv
import time
from pathlib import Path

import torch
from torch import nn

import fls_kernels as fls
from benchmarks.runner import stamp
from fls_kernels import timing

SECTIONS = ("statistics", "fvp", "q_products", "scoring", "selection", "update")


class MLP(nn.Module):
    """Two transformer-FFN blocks on token inputs [B, T, d]: d → 4d → d, twice (Gaussian output)."""

    def __init__(self, d: int) -> None:
        super().__init__()
        self.layers = nn.Sequential(
            nn.Linear(d, 4 * d), nn.GELU(), nn.Linear(4 * d, d), nn.Linear(d, 4 * d), nn.GELU(), nn.Linear(4 * d, d)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers(x).mean(1)


def build(name: str, device: str) -> tuple[nn.Module, list, str]:
    """(model, calibration batches, likelihood) of a named model."""
    g = torch.Generator().manual_seed(0)
    if name == "digits":
        from fls_kernels.compare import demo_model

        model, batches = demo_model(device)
        return model, batches, "categorical"
    d = 768 if device == "cuda" else 128
    batches = [torch.randn(16, 32, d, generator=g).to(device) for _ in range(4)]
    return MLP(d).to(device), batches, "gaussian"


def run(model_name: str, device: str, names: list[str], fit_steps: int, substeps: int, sparsity: float) -> list[dict]:
    base, batches, likelihood = build(model_name, device)
    rows = []
    for name in names:
        why = fls.backends.get_backend(name).load()
        if why is not None or device not in fls.backends.get_backend(name).devices:
            rows.append(dict(backend=name, note=why or f"does not run on {device}"))
            continue
        model = copy.deepcopy(base)
        pruner = fls.FishLegPruner(model, likelihood, backend=name, refine_steps=max(1, fit_steps // 10))
        start = time.perf_counter()
        with timing.record() as times:
            pruner.fit(batches, steps=fit_steps)
            pruner.prune(sparsity, substeps=substeps)
        if device == "cuda":
            torch.cuda.synchronize()
        total = time.perf_counter() - start
        rows.append(dict(backend=name, total=total, other=total - sum(times.values()), **times))
        print(f"{name:10} {total:8.2f} s  " + "  ".join(f"{k} {times.get(k, 0):.2f}" for k in SECTIONS), flush=True)
    return rows


def write(rows: list[dict], out_dir: str | Path, device: str, model_name: str, settings: str) -> tuple[Path, Path]:
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    meta = stamp(device)
    csv_path, md_path = out / f"e2e-{model_name}-{device}.csv", out / f"e2e-{model_name}-{device}.md"
    fields = ["backend", "total", *SECTIONS, "other", "note"]
    with open(csv_path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=[*fields, *meta])
        w.writeheader()
        for r in rows:
            w.writerow({**{k: r.get(k, "") for k in fields}, **meta})
    lines = [
        f"Model {model_name}, {settings}. Device {meta['gpu_or_cpu']}, torch {meta['torch']}, commit "
        f"{meta['commit']}, {meta['timestamp']}. Seconds (share of the total).",
        "",
        "| backend | total | " + " | ".join(SECTIONS) + " | other |",
        "|---|---:|" + "---:|" * (len(SECTIONS) + 1),
    ]
    for r in rows:
        if "total" not in r:
            lines.append(f"| {r['backend']} | not run: {r['note']} |" + " |" * (len(SECTIONS) + 1))
            continue
        cells = [f"{r.get(k, 0.0):.2f} ({100 * r.get(k, 0.0) / r['total']:.0f}%)" for k in (*SECTIONS, "other")]
        lines.append(f"| {r['backend']} | {r['total']:.2f} | " + " | ".join(cells) + " |")
    md_path.write_text("\n".join(lines) + "\n")
    return csv_path, md_path
