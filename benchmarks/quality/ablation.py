"""What each FLS choice is worth on MiniLM: 70% unstructured (and 2:4), one variant per row, same sentences.

Every row is :func:`benchmarks.quality.minilm.run` with the ``--reduced`` budgets, ``calib_sentences`` = 256 and
the overrides shown, so a row is reproduced by
``python -m benchmarks quality --model minilm --reduced --set calib_sentences=256 sparsities=0.7
patterns=unstructured methods=M FIELD=VALUE …``. ``python -m benchmarks quality --model minilm --ablation``
writes ablation.csv and ablation.md.
"""

from __future__ import annotations

import csv
from collections.abc import Callable
from pathlib import Path

from benchmarks.harness import stamp_line, write_csv
from benchmarks.quality import minilm

# (label, method, overrides of the study's defaults); the defaults are FLS's chosen options
VARIANTS: tuple[tuple[str, str, dict], ...] = (
    ("K-FAC-OBS as published: global, diagonal update, γ = 1, 2 statistics batches", "K-FAC", dict(stat_batches=2)),
    ("… statistics on every calibration batch", "K-FAC", {}),
    ("… uniform allocation", "K-FAC", dict(kfac_allocation="uniform")),
    (
        "… column-sequential update, γ = 1e-2",
        "K-FAC",
        dict(kfac_allocation="uniform", kfac_update="columns", relative_damping=1e-2),
    ),
    (
        "… adaptive mask, γ = 1e-4",
        "K-FAC",
        dict(kfac_allocation="uniform", kfac_update="adaptive", relative_damping=1e-4),
    ),
    (
        "FLS as before: global, diagonal update, γ = 1, 2 statistics batches",
        "FLS",
        dict(fls_update="diagonal", fls_damping=1.0, stat_batches=2),
    ),
    ("FLS global, adaptive, γ = 1e-4 (the study's FLS)", "FLS", {}),
    ("FLS uniform, adaptive, γ = 1e-4 (the study's FLS-uniform)", "FLS-uniform", {}),
    ("… γ = 1e-3", "FLS-uniform", dict(fls_damping=1e-3)),
    ("… γ = 1e-2", "FLS-uniform", dict(fls_damping=1e-2)),
    ("… diagonal update (γ = 1)", "FLS-uniform", dict(fls_update="diagonal", fls_damping=1.0)),
    ("… column-sequential update (γ = 1e-2)", "FLS-uniform", dict(fls_update="columns", fls_damping=1e-2)),
    ("… no aux steps (K-FAC start, refined only)", "FLS-uniform", dict(fls_fit_steps=0)),
    ("… 100 aux steps, 10 per sub-step", "FLS-uniform", dict(fls_fit_steps=100, fls_refine_steps=10)),
    (
        "… layer-wise aux FVPs (1 batch per step), 100 aux steps, 10 per sub-step",
        "FLS-uniform",
        dict(fls_aux_fisher="layerwise", fls_aux_batches=1, fls_fit_steps=100, fls_refine_steps=10),
    ),
    ("… 1 sub-step", "FLS-uniform", dict(substeps=1)),
    ("… 4 sub-steps", "FLS-uniform", dict(substeps=4)),
    ("SparseGPT (reference)", "SparseGPT", {}),
    ("FLS at 2:4 (the study's defaults)", "FLS-uniform", dict(patterns=("2:4",))),
    ("… no aux steps (K-FAC start)", "FLS-uniform", dict(patterns=("2:4",), fls_fit_steps=0)),
    (
        "… 100 aux steps, 10 per sub-step",
        "FLS-uniform",
        dict(patterns=("2:4",), fls_fit_steps=100, fls_refine_steps=10),
    ),
    (
        "… layer-wise aux FVPs (1 batch per step), 100 aux steps, 10 per sub-step",
        "FLS-uniform",
        dict(patterns=("2:4",), fls_aux_fisher="layerwise", fls_aux_batches=1, fls_fit_steps=100, fls_refine_steps=10),
    ),
    ("SparseGPT at 2:4 (reference)", "SparseGPT", dict(patterns=("2:4",))),
    ("FLS at 2:4, exact N:M sets", "FLS-uniform", dict(patterns=("2:4",), fls_nm_select="exact")),
    ("SparseGPT at 2:4, exact N:M sets", "SparseGPT", dict(patterns=("2:4",), sparsegpt_nm_select="exact")),
)


def config(method: str, overrides: dict) -> minilm.Config:
    base = {**minilm.REDUCED, "calib_sentences": 256, "sparsities": (0.7,), "patterns": ("unstructured",)}
    return minilm.Config(**{**base, **overrides, "methods": (method,)})


def run(variants=VARIANTS, log: Callable[[str], None] = print) -> list[dict]:
    rows = []
    for label, method, overrides in variants:
        (row,) = minilm.run(config(method, overrides), log=lambda _: None)
        settings = " ".join(f"{k}={','.join(map(str, v)) if isinstance(v, tuple) else v}" for k, v in overrides.items())
        rows.append({**row, "variant": label, "settings": settings})
        log(f"{label}: cosine {row['cosine']:.4f} / {row['nn_agreement']:.3f}, {row['method_seconds']:.0f} s")
    return rows


def table(rows: list[dict]) -> str:
    lines = [
        "all-MiniLM-L6-v2, 256 calibration / 192 evaluation sentences, `--reduced` budgets "
        "(2 sub-steps, FLS 20 aux steps + 3 per sub-step); `--set` gives each row's whole difference from the "
        "study's defaults, and “…” continues the group of rows above. Mean cosine / top-1 NN agreement; "
        "wall time of the method (fit and prune).",
        "",
        "| variant | method | cell | `--set` | cosine / NN | time |",
        "|---|---|---|---|---:|---:|",
    ]
    for r in rows:
        lines.append(
            f"| {r['variant']} | {r['method']} | {r['pattern']} {float(r['sparsity']):.0%} | {r['settings'] or '—'} | "
            f"{r['cosine']:.4f} / {r['nn_agreement']:.3f} | {r['method_seconds']:.0f} s |"
        )
    return "\n".join(lines)


def write(rows: list[dict], out_dir: str | Path, device: str = "cpu", stamp: str | None = None) -> list[Path]:
    """ablation.csv, ablation.md and stamp.txt; ``stamp`` (default: this checkout now) names where rows ran."""
    stamp = stamp or stamp_line(device)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    fields = ["variant", "method", "pattern", "sparsity", "settings", "cosine", "nn_agreement", "method_seconds"]
    write_csv(out / "ablation.csv", fields, rows)
    (out / "ablation.md").write_text(table(rows) + f"\n\n{stamp}\n")
    (out / "stamp.txt").write_text(stamp)
    return [out / "ablation.csv", out / "ablation.md"]


def stamps(parts: list[Path]) -> str:
    """The distinct stamps of several runs' outputs, in order."""
    found: list[str] = []
    for part in parts:
        path = Path(part) / "stamp.txt"
        text = path.read_text().strip() if path.exists() else ""
        if text and text not in found:
            found.append(text)
    return " ".join(found)


def merge(parts: list[Path]) -> list[dict]:
    """The rows of several runs over parts of :data:`VARIANTS` (their ablation.csv files), in table order; a row
    of a later part replaces an earlier part's row of the same variant (a rerun)."""
    order = {key(label, overrides): i for i, (label, _, overrides) in enumerate(VARIANTS)}
    rows: dict[tuple[str, str], dict] = {}
    for part in parts:
        with open(Path(part) / "ablation.csv") as f:
            for r in csv.DictReader(f):
                row = {**r, **{k: float(r[k]) for k in ("cosine", "nn_agreement", "method_seconds")}}
                rows[(r["variant"], r["pattern"])] = row
    return sorted(rows.values(), key=lambda r: order.get((r["variant"], r["pattern"]), len(order)))


def key(label: str, overrides: dict) -> tuple[str, str]:
    """A variant's identity in merged outputs: its label and cell pattern."""
    return label, overrides.get("patterns", ("unstructured",))[0]
