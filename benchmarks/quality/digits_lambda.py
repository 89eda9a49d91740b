"""Does the learned λ help on the digits CNN? FLS fitted against the same configuration at 0 aux steps, K-FAC with
the same update rule and oBERT, one-shot at several calibration sizes; and in gradual pruning, λ refined
(progressive assimilation) against λ re-fitted from K-FAC statistics at each pruning step and K-FAC re-estimated.

One-shot variants (all with the FishLeg Surgeon's diagonal update −Q z, global allocation, ``protocol.substeps``
sub-steps; FLS fits λ with ``protocol.fls_fit_steps`` aux steps and refines it with ``protocol.fls_refine_steps``
before each later sub-step):
- ``FLS-diagonal``: λ from the diagonal Fisher start (the digits study's best FLS);
- ``FLS-diagonal, 0 aux steps``: the same with no aux step (Q = diag(F̂ + γ)⁻¹: OBD's scores, OBS's update);
- ``FLS, K-FAC start`` and ``FLS, K-FAC start, 0 aux steps``: λ from K-FAC statistics;
- ``K-FAC``: K-FAC-OBS, re-estimated before every sub-step (the same Q form and update, no learning);
- ``oBERT``: block-diagonal empirical Fisher (its own update), as many gradients as calibration samples (≤ 1024).

Calibration: the first n samples of the training split (batches of at most 128; every method's statistics and aux
steps read only those). Damping per variant and seed from ``damping_grid`` × mean diag F̂ by validation accuracy at
``sweep_sparsity`` with the largest calibration size; the test split is never used for choices.

Gradual variants (to ``gradual_target`` with the digits study's schedule, fine-tuning budget and calibration; the
diagonal update; damping of the one-shot variant each starts like):
- ``refined``: FLS-diagonal, λ refined with ``protocol.fls_gradual_refine_steps`` before each pruning step;
- ``refined, K-FAC start``: the same from K-FAC statistics;
- ``re-fitted from K-FAC``: λ restarted from K-FAC statistics of the masked model at each pruning step, then as
  many aux steps (``refine_from="init"``);
- ``refined, few steps``: the K-FAC start refined with ``cheap_refine_steps`` only, nearer K-FAC's compute;
- ``refined, K-FAC's compute``: the K-FAC start (taken once, on the dense model) with no fit, no aux step on
  training steps and ``equal_refine_steps`` aux steps before each pruning sub-step, where K-FAC re-estimates its
  statistics from ``GRADUAL_BATCHES`` batches: claim (c) at equal compute (its seconds are tabled beside K-FAC's);
- ``K-FAC start, frozen``: the same with no aux step at all (λ stays the dense model's K-FAC start): what the
  refinement adds over neither refining nor re-estimating;
- ``K-FAC re-estimated``: K-FAC-OBS re-estimated at each pruning step.

``python -m benchmarks quality --model digits --lambda-study [--seed-list 0 1 2]`` writes digits_lambda.csv and
digits_lambda.md (``--merge`` combines runs over disjoint seeds).
"""

from __future__ import annotations

import copy
import csv
import dataclasses
import math
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

from torch import nn

import fls_kernels as fls
from benchmarks.harness import write_csv
from benchmarks.quality import digits

ONE_SHOT = (
    "FLS-diagonal",
    "FLS-diagonal, 0 aux steps",
    "FLS, K-FAC start",
    "FLS, K-FAC start, 0 aux steps",
    "K-FAC",
    "oBERT",
)
GRADUAL = (
    "refined",
    "refined, K-FAC start",
    "re-fitted from K-FAC",
    "refined, few steps",
    "refined, K-FAC's compute",
    "K-FAC start, frozen",
    "K-FAC re-estimated",
)
#: the gradual variant with no fit and no tracking steps, whose refinement alone stands against K-FAC's re-estimation
EQUAL_COMPUTE = "refined, K-FAC's compute"
#: the gradual variant that never moves λ from the dense model's K-FAC start
FROZEN = "K-FAC start, frozen"
#: statistics batches (of 128) of the gradual runs, as in the digits study; aux steps read the whole training split
GRADUAL_BATCHES = 8
#: the one-shot variant whose chosen damping each gradual variant uses
GRADUAL_DAMPING = {
    "refined": "FLS-diagonal",
    "refined, K-FAC start": "FLS, K-FAC start",
    "re-fitted from K-FAC": "FLS, K-FAC start",
    "refined, few steps": "FLS, K-FAC start",
    EQUAL_COMPUTE: "FLS, K-FAC start, 0 aux steps",
    FROZEN: "FLS, K-FAC start, 0 aux steps",
    "K-FAC re-estimated": "K-FAC",
}


#: the variants the full study runs (the K-FAC start's fitted one-shot variant is left to the MiniLM study, where that
#: start is the recommended one; here it costs as much as FLS-diagonal's)
STUDY_ONE_SHOT = tuple(v for v in ONE_SHOT if v != "FLS, K-FAC start")


@dataclass
class Config:
    seeds: tuple[int, ...] = (0, 1, 2)
    calib_sizes: tuple[int, ...] = (64, 256, 1024)
    sparsities: tuple[float, ...] = (0.8, 0.9)
    sweep_sparsity: float = 0.8
    damping_grid: tuple[float, ...] = (0.1, 1.0, 10.0)
    one_shot: tuple[str, ...] = STUDY_ONE_SHOT
    gradual: tuple[str, ...] = GRADUAL
    gradual_target: float = 0.95
    cheap_refine_steps: int = 10
    equal_refine_steps: int = 11  # aux steps per sub-step: 8 took 0.72× K-FAC's seconds (5 seeds, 1 thread)
    protocol: digits.Protocol = field(default_factory=digits.Protocol)


#: a CI-sized run (budgets of a smoke test, not a result)
SMOKE = dict(
    seeds=(0,),
    calib_sizes=(32, 64),
    damping_grid=(1.0,),
    cheap_refine_steps=1,
    equal_refine_steps=1,
    protocol=digits.Protocol(
        substeps=2,
        fls_fit_steps=2,
        fls_refine_steps=1,
        fls_gradual_refine_steps=2,
        finetune_steps=6,
        prune_until=4,
        prune_every=2,
        gradual_substeps=1,
        obert_grads=16,
    ),
)


def calibration(data: digits.Split, n: int) -> list:
    """The first ``n`` training samples, in batches of at most 128."""
    xs, ys = digits.train_tensors(data)
    if not 1 <= n <= len(xs):
        raise ValueError(f"calib_sizes: {n} outside 1..{len(xs)} (the training split)")
    size = min(n, 128)
    return [(xs[i : min(i + size, n)], ys[i : min(i + size, n)]) for i in range(0, n, size)]


def make(
    variant: str, model: nn.Module, *, damping: float, config: Config, seed: int, batches: int, **kw
) -> fls.Pruner:
    """The pruner of a one-shot or gradual ``variant`` (see the module docstring) reading ``batches`` batches."""
    p = config.protocol
    common = dict(relative_damping=damping, seed=seed, **kw)
    if variant == "oBERT":
        return fls.OBERTPruner(model, num_grads=min(p.obert_grads, batches * 128), **common)
    if variant in ("K-FAC", "K-FAC re-estimated"):
        return fls.KFACPruner(model, stat_batches=batches, **common)
    diagonal_start = variant.startswith("FLS-diagonal") or variant == "refined"
    if "0 aux steps" in variant:
        refine = 0
    elif variant in GRADUAL:
        steps = {"refined, few steps": config.cheap_refine_steps, EQUAL_COMPUTE: config.equal_refine_steps, FROZEN: 0}
        refine = steps.get(variant, p.fls_gradual_refine_steps)
    else:
        refine = p.fls_refine_steps
    if variant in (EQUAL_COMPUTE, FROZEN):
        common["gradual_aux_steps"] = 0
    return fls.FishLegPruner(
        model,
        init="diagonal" if diagonal_start else "kfac",
        init_batches=batches,
        update="diagonal",
        refine_steps=refine,
        refine_from="init" if variant == "re-fitted from K-FAC" else "current",
        **common,
    )


def fit_steps(variant: str, config: Config) -> int:
    fls_variant = variant.startswith("FLS") or variant in GRADUAL and variant != "K-FAC re-estimated"
    no_fit = "0 aux steps" in variant or variant in (EQUAL_COMPUTE, FROZEN)
    return 0 if no_fit or not fls_variant else config.protocol.fls_fit_steps


#: fixed probes per validation batch of the held-out aux loss
AUX_PROBES = 2


def held_out(data: digits.Split) -> list:
    """The validation split in batches of 128: the held-out batches of the aux loss (no fit reads them)."""
    return [(data.x_val[i : i + 128], data.y_val[i : i + 128]) for i in range(0, len(data.x_val), 128)]


def one_shot(
    variant, dense, data, config, seed, damping, n
) -> tuple[dict[float, tuple[float, float]], float, tuple[float, float]]:
    """(validation, test) accuracy per sparsity from one fit on ``n`` calibration samples, its seconds, and the
    held-out aux loss of its λ at its start and after the fit (FLS, at its γ; NaN otherwise), measured outside the
    seconds (the start on a twin pruner fitted with 0 steps, so the fit itself runs as it would alone)."""
    t0 = time.perf_counter()
    loader = calibration(data, n)
    model = copy.deepcopy(dense)
    pruner = make(variant, model, damping=damping, config=config, seed=seed, batches=len(loader))
    pruner.fit(loader, steps=fit_steps(variant, config))
    t1 = time.perf_counter()
    aux = (math.nan, math.nan)
    if isinstance(pruner, fls.FishLegPruner):
        twin = make(variant, copy.deepcopy(dense), damping=damping, config=config, seed=seed, batches=len(loader))
        twin.fit(loader, steps=0)
        batches = held_out(data)
        aux = tuple(p.aux_loss(batches, probes=AUX_PROBES, seed=seed + 1) for p in (twin, pruner))
        twin.finalize()
    t2 = time.perf_counter()
    out = digits.prune_each(pruner, model, data, tuple(config.sparsities), config.protocol.substeps)
    return out, (t1 - t0) + (time.perf_counter() - t2), aux


def run(config: Config | None = None, log: Callable[[str], None] = print) -> list[dict]:
    """Every row of the study, at ``config.protocol.threads`` torch threads (the caller's restored after)."""
    config = config or Config()
    with digits.torch_threads(config.protocol.threads):
        return _run(config, log)


def _run(config: Config, log: Callable[[str], None]) -> list[dict]:
    unknown = [v for v in config.one_shot if v not in ONE_SHOT] + [v for v in config.gradual if v not in GRADUAL]
    if unknown:
        raise ValueError(f"variants: unknown {unknown}; choose from {list(ONE_SHOT)} and {list(GRADUAL)}")
    if config.sweep_sparsity not in config.sparsities:
        raise ValueError(f"sweep_sparsity: {config.sweep_sparsity} is not one of sparsities {config.sparsities}")
    rows: list[dict] = []
    largest, rest = max(config.calib_sizes), sorted(set(config.calib_sizes) - {max(config.calib_sizes)})
    for seed in config.seeds:
        data, dense = digits.trained(seed)
        chosen: dict[str, float] = {}
        for variant in config.one_shot:
            sweep = {g: one_shot(variant, dense, data, config, seed, g, largest) for g in config.damping_grid}
            best = max(config.damping_grid, key=lambda g: sweep[g][0][config.sweep_sparsity][0])
            chosen[variant] = best
            found = {largest: sweep[best], **{n: one_shot(variant, dense, data, config, seed, best, n) for n in rest}}
            for n, (accs, seconds, aux) in sorted(found.items()):
                for s, (val, test) in accs.items():
                    rows.append(
                        dict(
                            seed=seed,
                            mode="one-shot",
                            variant=variant,
                            calibration=n,
                            sparsity=s,
                            damping=best,
                            val_accuracy=val,
                            accuracy=test,
                            seconds=seconds,
                            held_out_aux_start=aux[0],
                            held_out_aux=aux[1],
                        )
                    )
            log(f"seed {seed} {variant:<30} γ×{best:<5} " + _summary(rows, seed, variant))
        for variant in config.gradual:
            damping = chosen.get(GRADUAL_DAMPING[variant], 1.0)
            t0 = time.perf_counter()

            build = partial(
                make, variant, damping=damping, config=config, seed=seed, batches=min(GRADUAL_BATCHES, len(data.train))
            )
            protocol = dataclasses.replace(config.protocol, fls_fit_steps=fit_steps(variant, config))
            acc = digits.gradual(variant, dense, data, protocol, seed, damping, config.gradual_target, build)
            seconds = time.perf_counter() - t0
            rows.append(
                dict(
                    seed=seed,
                    mode="gradual",
                    variant=variant,
                    calibration=sum(len(y) for _, y in data.train),
                    sparsity=config.gradual_target,
                    damping=damping,
                    val_accuracy=float("nan"),
                    accuracy=acc,
                    seconds=seconds,
                    held_out_aux_start=float("nan"),
                    held_out_aux=float("nan"),
                )
            )
            log(f"seed {seed} gradual {variant:<26} γ×{damping:<5} {acc:.3f} ({seconds:.0f} s)")
    return rows


def _summary(rows: list[dict], seed: int, variant: str) -> str:
    mine = [r for r in rows if r["seed"] == seed and r["variant"] == variant and r["mode"] == "one-shot"]
    return " ".join(f"{r['calibration']}/{r['sparsity']:.0%}:{r['accuracy']:.3f}" for r in mine)


def _paired(rows: list[dict], a: str, b: str, **cell) -> str:
    """mean ± standard error over seeds of (a − b) in one cell; "—" without both."""
    pick = {
        (r["variant"], r["seed"]): r["accuracy"]
        for r in rows
        if all(r[k] == v for k, v in cell.items()) and r["variant"] in (a, b)
    }
    diffs = [pick[(a, s)] - pick[(b, s)] for s in sorted({s for _, s in pick}) if (a, s) in pick and (b, s) in pick]
    if not diffs:
        return "—"
    se = statistics.stdev(diffs) / len(diffs) ** 0.5 if len(diffs) > 1 else 0.0
    return f"{statistics.fmean(diffs):+.3f} ± {se:.3f}"


#: the paired one-shot differences tabulated (a − b)
PAIRS = (
    ("FLS-diagonal", "FLS-diagonal, 0 aux steps"),
    ("FLS-diagonal", "K-FAC"),
    ("FLS-diagonal", "oBERT"),
    ("FLS, K-FAC start", "FLS, K-FAC start, 0 aux steps"),
    ("FLS, K-FAC start", "K-FAC"),
    ("FLS, K-FAC start, 0 aux steps", "K-FAC"),
)


def table(rows: list[dict], config: Config) -> str:
    p = config.protocol
    seeds = sorted({r["seed"] for r in rows})
    shot = [r for r in rows if r["mode"] == "one-shot"]
    variants = [v for v in ONE_SHOT if any(r["variant"] == v for r in shot)]
    cells = sorted({(r["calibration"], r["sparsity"]) for r in shot})
    lines = [
        f"Digits CNN, seeds {seeds}. One-shot: {p.substeps} sub-steps, no fine-tuning, the diagonal update −Q z "
        f"(oBERT: its own), global allocation; FLS fits λ with {p.fls_fit_steps} aux steps and refines it with "
        f"{p.fls_refine_steps} before each later sub-step; calibration: the first n training samples for every "
        f"method. Damping per variant and seed from {list(config.damping_grid)} × mean diag F̂ by validation "
        f"accuracy at {config.sweep_sparsity:.0%} with {max(config.calib_sizes)} samples. Test accuracy, mean ± sd "
        "over seeds.",
        "",
        "| calibration | sparsity | " + " | ".join(variants) + " |",
        "|---:|---:|" + "---:|" * len(variants),
    ]
    for n, s in cells:
        values = [
            [r["accuracy"] for r in shot if (r["calibration"], r["sparsity"], r["variant"]) == (n, s, v)]
            for v in variants
        ]
        lines.append(f"| {n} | {s:.0%} | " + " | ".join(digits.cell(v) for v in values) + " |")
    seconds = {
        v: statistics.fmean(
            [r["seconds"] for r in shot if r["variant"] == v and r["calibration"] == max(config.calib_sizes)]
            or [float("nan")]
        )
        for v in variants
    }
    pairs = [(a, b) for a, b in PAIRS if a in variants and b in variants]
    lines += [
        "",
        f"Seconds per fit and its {len(config.sparsities)} prunes at {max(config.calib_sizes)} samples (mean over "
        "seeds and dampings): " + ", ".join(f"{v} {t:.0f}" for v, t in seconds.items()) + ".",
    ]
    if pairs:
        lines += [
            "",
            "Paired differences in test accuracy (a − b), mean ± standard error over seeds:",
            "",
            "| calibration | sparsity | " + " | ".join(f"{a} − {b}" for a, b in pairs) + " |",
            "|---:|---:|" + "---:|" * len(pairs),
        ]
    for n, s in cells if pairs else ():
        lines.append(
            f"| {n} | {s:.0%} | " + " | ".join(_paired(shot, a, b, calibration=n, sparsity=s) for a, b in pairs) + " |"
        )
    lines += _aux_table(shot, variants, config)
    grad = [r for r in rows if r["mode"] == "gradual"]
    if grad:
        gvariants = [v for v in GRADUAL if any(r["variant"] == v for r in grad)]
        lines += [
            "",
            f"Gradual to {config.gradual_target:.0%} (the digits study's schedule and {p.finetune_steps} Adam steps; "
            f"FLS fits λ with {p.fls_fit_steps} aux steps first and refines it with {p.fls_gradual_refine_steps} "
            f"({config.cheap_refine_steps} for “few steps”) before each pruning step, plus one aux step per training "
            f"step; “K-FAC's compute”: no fit, no aux step on training steps, {config.equal_refine_steps} before each "
            f"pruning sub-step, where K-FAC re-estimates from {GRADUAL_BATCHES} batches; “frozen”: no aux step at "
            "all; the diagonal update; damping of the matching one-shot variant). Test accuracy; paired to K-FAC "
            "re-estimated and to the frozen K-FAC start; seconds of the whole run (fine-tuning included), mean over "
            "seeds.",
            "",
            "| variant | accuracy | − K-FAC re-estimated | − K-FAC start, frozen | seconds |",
            "|---|---:|---:|---:|---:|",
        ]
        for v in gvariants:
            mine = [r for r in grad if r["variant"] == v]
            diffs = " | ".join("—" if v == ref else _paired(grad, v, ref) for ref in ("K-FAC re-estimated", FROZEN))
            secs = statistics.fmean(r["seconds"] for r in mine)
            lines.append(f"| {v} | {digits.cell([r['accuracy'] for r in mine])} | {diffs} | {secs:.1f} |")
    return "\n".join(lines)


def _aux_table(shot: list[dict], variants: list[str], config: Config) -> list[str]:
    """The held-out aux loss of each FLS variant's λ after its fit, per calibration size (mean ± sd over seeds),
    beside the accuracy it pruned to; none where no row measured it."""
    measured = [v for v in variants if any(r["variant"] == v and _finite(r.get("held_out_aux")) for r in shot)]
    if not measured:
        return []
    lines = [
        "",
        f"Held-out aux loss 𝒜 of λ at its start → after the fit (the validation split, {AUX_PROBES} fixed probes "
        "per batch of 128, the same for every variant of a seed; lower is better) at each seed's chosen damping "
        "(𝒜 depends on γ: compare variants where their γ agree), mean ± sd over seeds, and test accuracy at "
        f"{max(config.sparsities):.0%}:",
        "",
        "| calibration | " + " | ".join(f"{v}: aux loss | accuracy" for v in measured) + " |",
        "|---:|" + "---:|---:|" * len(measured),
    ]
    for n in sorted({r["calibration"] for r in shot}):
        cells = []
        for v in measured:
            mine = [r for r in shot if r["variant"] == v and r["calibration"] == n]
            fits = {r["seed"]: (r.get("held_out_aux_start", math.nan), r["held_out_aux"], r["damping"]) for r in mine}
            top = [r["accuracy"] for r in mine if r["sparsity"] == max(config.sparsities)]
            dampings = "/".join(f"{d:g}" for _, _, d in fits.values())
            start, end = (
                _mean_sd([a for a, _, _ in fits.values()], ".4g"),
                _mean_sd([a for _, a, _ in fits.values()], ".4g"),
            )
            cells.append(f"{start} → {end} (γ × {dampings}) | {digits.cell(top)}")
        lines.append(f"| {n} | " + " | ".join(cells) + " |")
    return lines


def _finite(value: object) -> bool:
    return isinstance(value, float) and math.isfinite(value)


def _mean_sd(values: list[float], spec: str) -> str:
    values = [v for v in values if _finite(v)]
    if not values:
        return "—"
    sd = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{statistics.fmean(values):{spec}} ± {sd:{spec}}"


FIELDS = [
    "seed",
    "mode",
    "variant",
    "calibration",
    "sparsity",
    "damping",
    "val_accuracy",
    "accuracy",
    "seconds",
    "held_out_aux_start",
    "held_out_aux",
]


def write(rows: list[dict], config: Config, out_dir: str | Path, stamp: str | None = None) -> list[Path]:
    """digits_lambda.csv and digits_lambda.md; ``stamp`` (default: this checkout now) names where the rows ran."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    write_csv(out / "digits_lambda.csv", FIELDS, rows)
    stamp = stamp or digits.stamp(config.protocol.threads)
    (out / "digits_lambda.md").write_text(table(rows, config) + f"\n\n{stamp}\n")
    (out / "stamp.txt").write_text(stamp)
    return [out / "digits_lambda.csv", out / "digits_lambda.md"]


def merge(parts: list[Path]) -> tuple[list[dict], str]:
    """The rows of several runs over disjoint seeds (their digits_lambda.csv), and their stamps."""
    rows: list[dict] = []
    stamps: list[str] = []
    for part in parts:
        with open(Path(part) / "digits_lambda.csv") as f:
            got = [
                {
                    **r,
                    "seed": int(r["seed"]),
                    "calibration": int(r["calibration"]),
                    **{k: float(r[k]) for k in ("sparsity", "damping", "val_accuracy", "accuracy", "seconds")},
                    # runs from before the held-out aux loss was measured: NaN
                    **{k: float(r.get(k) or "nan") for k in ("held_out_aux_start", "held_out_aux")},
                }
                for r in csv.DictReader(f)
            ]
        clash = {r["seed"] for r in got} & {r["seed"] for r in rows}
        if clash:
            raise ValueError(f"merge: seeds {sorted(clash)} appear in more than one run ({part})")
        rows += got
        stamp = Path(part) / "stamp.txt"
        if stamp.exists() and stamp.read_text().strip() not in stamps:
            stamps.append(stamp.read_text().strip())
    return rows, " ".join(stamps)


__all__ = ["Config", "GRADUAL", "ONE_SHOT", "SMOKE", "make", "merge", "run", "table", "write"]
