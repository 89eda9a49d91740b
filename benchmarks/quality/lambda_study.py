"""Does the learned λ help? FLS's fitted inverse Fisher against its own K-FAC start and against K-FAC with the same
solver, on MiniLM, each cell paired over the evaluation sentences, with the held-out aux loss of each λ.

Sentences (the MiniLM study's pool, :func:`benchmarks.quality.minilm.sentences`) are split three ways: calibration
(statistics and aux steps), validation (early stopping and the held-out aux loss; options are chosen on it) and
evaluation (the table). Every variant prunes the 36 encoder Linear layers with the same solver: uniform
allocation, the adaptive column update, γ = ``damping`` · mean diag F̂, K-FAC start, ``substeps`` sub-steps.

Variants (FLS unless named):
- ``K-FAC start``: λ at its K-FAC start, no aux step anywhere (the statistics are those of the dense model);
- ``fit``: ``fit_steps`` aux steps, no refinement;
- ``fit (early-stopped)``: the same fit ending at its best λ on the validation batches (its record shows whether
  the aux steps lower the held-out aux loss at all);
- ``fit (focused)``: the same fit with probes focused on the cell's candidates (``probe_focus`` = the cell's
  sparsity: unit variance on the lowest-scored share of each layer that the prune removes, 1% elsewhere), so the
  aux loss weights the columns Q e_q the OBS step reads (its held-out aux loss is that of the focused probes, not
  comparable with the other rows');
- ``fit + refine``: and ``refine_steps`` masked aux steps before each later sub-step (the paper's progressive
  assimilation, the README's recipe);
- ``fit + refine (early-stopped)``: the same, each run ending at its best λ on the validation batches;
- ``restart + refine``: λ restarted from K-FAC statistics of the masked model before each later sub-step, then
  refined (``refine_from="init"``), early-stopped;
- ``fit + refine (full)``, ``restart + refine (full)``: the same two with the refinement's aux steps on every
  weight at its current value (``aux_space="full"``, the default with the column solver: Q ≈ (F + γI)⁻¹ of the
  pruned model, the factors the solver reads) instead of the alive ones (``aux_space="alive"``, the other
  refining variants), both early-stopped;
- ``fit (Kronecker only)``, ``fit (Kronecker only, early-stopped)``, ``restart + refine (full, Kronecker only)``:
  the same with A, Q's elementwise scaling, kept at its start (``learn_scaling=False``), so every aux step moves
  only the Kronecker factors G_R ⊗ G_L, which is all the column solver reads of Q (it reads A through a rank-one
  fit);
- ``fit (balanced, early-stopped)``, ``restart + refine (full, balanced)``: the same as without, with R and L
  rescaled to one scale at every start (``balance_factors=True``: Q unchanged), so that Adam moves both;
- ``fit (annealed, early-stopped)``: the early-stopped fit from the K-FAC start damped by ``anneal``·γ, its aux
  steps' γ annealed geometrically down to γ (``anneal_damping``: the aux problem is better conditioned at larger
  γ), validated at γ;
- ``fit (triangular)``, ``fit (triangular, early-stopped)``, ``restart + refine (full, triangular)``: the same as
  without, with the aux steps moving only R's upper and L's lower triangle (``triangular_factors=True``: R and L
  stay the Cholesky factors of G_R and G_L the K-FAC start gives, the official FishLeg code's parameterisation);
- ``fit (prune-validated)`` (block by block only): the fit validated, at its start and every ``validate_every``
  steps, by the block's output error on the validation batches after a trial prune to the cell's target with λ
  then (``validate_by="prune"``), ending at the λ whose trial pruned best — its K-FAC start included;
- ``fit (prune-validated, last block)``: the same with the error of the last block's output, the trial-pruned
  block's outputs carried through the blocks after it, against the dense model's (``validate_by="prune-last"``);
- ``restart``: FLS's K-FAC start restarted from K-FAC statistics of the masked model before each later sub-step,
  with no aux step anywhere: K-FAC re-estimated (the ablation of the restarted refinements: what their aux steps add
  over the restart alone). It draws the same labels in the same order as ``K-FAC`` and prunes bit for bit alike;
  the noise-floor tables in benchmarks/README.md were measured when K-FAC's first sub-step drew an estimate of its
  own, so the two differed by their labels;
- ``K-FAC``: K-FAC-OBS re-estimated before every sub-step after the first (no λ learning; γ from the first
  estimate, as FLS's);
- ``SparseGPT``: :class:`~fls_kernels.SparseGPTPruner` with its published defaults (1% dampening, layers in order on
  the already-pruned model's inputs, every layer to the target sparsity), on the same calibration batches.

Each row is paired, over the evaluation sentences, with K-FAC, with FLS's K-FAC start (0 aux steps) and with
SparseGPT of its cell. ``lrs`` runs every variant that takes an aux step at each of several Adam learning rates
(labelled "variant (lr …)"), the others once. ``calib_sizes`` runs the cells at several calibration sizes (the first
n calibration sentences; validation and evaluation stay fixed), and ``other_length`` scores every variant once more
on the evaluation sentences cut at another maximum length, which no option was chosen on; ``other_text`` (e.g.
"docstrings", :data:`benchmarks.quality.minilm.TEXTS`) scores every variant on ``eval_sentences`` sentences of
another text, which neither calibrates nor chooses anything.

The held-out aux loss 𝒜 of each FLS variant's λ after its fit is measured on the validation batches with fixed
probes (paired across variants; lower is better). ``python -m benchmarks quality --model minilm --lambda-study``
writes lambda.csv, lambda_sentences.csv and lambda.md.
"""

from __future__ import annotations

import ast
import copy
import dataclasses
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import fls_kernels as fls
from benchmarks.harness import stamp_line, write_csv
from benchmarks.quality import minilm
from fls_kernels import llm
from fls_kernels.models import ENCODER_LAYERS, load_minilm, tokenize

VARIANTS = (
    "K-FAC start",
    "fit",
    "fit (early-stopped)",
    "fit (focused)",
    "fit + refine",
    "fit + refine (early-stopped)",
    "restart + refine",
    "fit + refine (full)",
    "restart + refine (full)",
    "fit (Kronecker only)",
    "fit (Kronecker only, early-stopped)",
    "restart + refine (full, Kronecker only)",
    "fit (balanced, early-stopped)",
    "restart + refine (full, balanced)",
    "fit (annealed, early-stopped)",
    "fit (triangular)",
    "fit (triangular, early-stopped)",
    "restart + refine (full, triangular)",
    "fit (prune-validated)",
    "fit (prune-validated, last block)",
    "restart",
    "K-FAC",
    "SparseGPT",
)
REFERENCE = "K-FAC"
#: the transformer recipe the README recommends, as it writes it: the "K-FAC start" variant (FLS with no aux step),
#: its options chosen on the validation split; then ``fit(loader, steps=0)`` and ``prune(s, substeps=4)``
RECIPE_CALL = (
    'FishLegPruner(model, init="kfac", update="adaptive", relative_damping=1e-3, allocation="uniform", refine_steps=0)'
)
RECIPE_FIT_STEPS, RECIPE_SUBSTEPS = 0, llm.SUBSTEPS  # the prune command (fls_kernels.llm) runs the same recipe


def recipe() -> dict:
    """The keyword options of :data:`RECIPE_CALL`."""
    call = ast.parse(RECIPE_CALL, mode="eval").body
    return {k.arg: ast.literal_eval(k.value) for k in call.keywords}


#: the paired differences tabulated: each row minus these variants of its cell, where they ran
REFERENCES = ("K-FAC", "K-FAC start", "SparseGPT")
#: the variants whose fit is validated by trial prunes: block by block only
PRUNE_VALIDATED = ("fit (prune-validated)", "fit (prune-validated, last block)")
#: the variants that take no aux step (so no learning rate)
NO_AUX_STEPS = ("K-FAC start", "restart", "K-FAC", "SparseGPT")


@dataclass
class Config:
    calib_sentences: int = 64
    calib_sizes: tuple[int, ...] = ()  # calibration sizes run (the first n sentences); () = calib_sentences
    val_sentences: int = 32
    eval_sentences: int = 192
    batch_size: int = 8
    max_length: int = 32
    other_length: int = 0  # also score the evaluation sentences cut at this maximum length (0: not)
    other_text: str = ""  # also score eval_sentences sentences of this text (minilm.TEXTS; "": not)
    sparsities: tuple[float, ...] = (0.7,)
    patterns: tuple[str, ...] = ("unstructured",)
    variants: tuple[str, ...] = VARIANTS
    substeps: int = 4
    fit_steps: int = 50
    refine_steps: int = 20
    validate_every: int = 10
    probes: int = 4
    label_samples: int = 1  # sampled labels per input in every statistics pass (K-FAC and FLS's start)
    damping: float = 1e-3  # × mean diag F̂: chosen on the validation cosine (γ = 1e-4 … 1e-1)
    lr: float = 1e-3
    anneal: float = 10.0  # the "annealed" variants' anneal_damping
    lrs: tuple[float, ...] = ()  # learning rates run, each variant with aux steps at every one; () = (lr,)
    layers: str = ENCODER_LAYERS  # the layers pruned (a regex; all 36 encoder Linear layers by default)
    sequential: str = ""  # "blocks": every variant block by block (aux steps and early stopping per block)
    seed: int = 0
    device: str = "cpu"


#: a CI-sized run: every variant, a few sentences, a few steps
SMOKE = dict(
    calib_sentences=8,
    val_sentences=4,
    eval_sentences=8,
    batch_size=4,
    max_length=12,
    substeps=2,
    fit_steps=2,
    refine_steps=2,
    validate_every=1,
    probes=1,
)


def splits(config: Config) -> tuple[list[str], list[str], list[str]]:
    """Disjoint calibration, validation and evaluation sentences."""
    pool = minilm.sentences(config.seed)
    c, v, e = config.calib_sentences, config.val_sentences, config.eval_sentences
    if len(pool) < c + v + e:
        raise ValueError(f"only {len(pool)} sentences available, {c + v + e} requested")
    return pool[:c], pool[c : c + v], pool[c + v : c + v + e]


def sizes(config: Config) -> tuple[int, ...]:
    """The calibration sizes run, each at most ``calib_sentences``."""
    chosen = tuple(config.calib_sizes) or (config.calib_sentences,)
    bad = [n for n in chosen if not 1 <= n <= config.calib_sentences]
    if bad:
        raise ValueError(f"calib_sizes: {bad} outside 1..calib_sentences ({config.calib_sentences})")
    return chosen


def make(
    variant: str, model, config: Config, pattern: str, stat_batches: int, validation: list, sparsity: float = 0.5
) -> fls.Pruner:
    """The pruner of ``variant`` (see the module docstring) for a cell of ``sparsity``; every one but SparseGPT
    with the same solver and damping."""
    mode = dict(sequential=config.sequential) if config.sequential else {}
    if variant == "SparseGPT":
        return fls.SparseGPTPruner(model, include=config.layers, pattern=pattern, **mode)
    common = dict(
        **mode,
        likelihood="gaussian",
        include=config.layers,
        pattern=pattern,
        allocation="uniform",
        update="adaptive",
        relative_damping=config.damping,
        label_samples=config.label_samples,
        seed=config.seed,
    )
    if variant == "K-FAC":
        return fls.KFACPruner(model, stat_batches=stat_batches, **common)
    validated = variant in PRUNE_VALIDATED
    if validated and not config.sequential:
        raise ValueError(f"variants: {variant!r} trial-prunes block by block; use sequential='blocks'")
    refine = config.refine_steps if "refine" in variant else 0
    full = "(full" in variant
    stop = "early-stopped" in variant or variant.startswith("restart") or full or validated
    return fls.FishLegPruner(
        model,
        init="kfac",
        init_batches=stat_batches,
        lr=config.lr,
        refine_steps=refine,
        refine_from="init" if variant.startswith("restart") else "current",
        validation=validation if stop else None,
        validate_every=config.validate_every,
        validation_probes=config.probes,
        validate_by=("prune-last" if "last block" in variant else "prune") if validated else "aux",
        probe_focus=sparsity if variant == "fit (focused)" else None,
        aux_space="full" if full else "alive",
        learn_scaling="Kronecker only" not in variant,
        balance_factors="balanced" in variant,
        triangular_factors="triangular" in variant,
        anneal_damping=config.anneal if "annealed" in variant else 1.0,
        **common,
    )


def fit_steps(variant: str, config: Config) -> int:
    return 0 if variant in NO_AUX_STEPS else config.fit_steps


def learning_rates(variant: str, config: Config) -> tuple[float, ...]:
    """The Adam learning rates ``variant`` runs at: every one of ``lrs`` where it takes aux steps, else one."""
    if variant in NO_AUX_STEPS or not config.lrs:
        return (config.lr,)
    bad = [lr for lr in config.lrs if not lr > 0]
    if bad:
        raise ValueError(f"lrs: expected positive learning rates, got {bad}")
    return tuple(config.lrs)


def label(variant: str, lr: float, config: Config) -> str:
    """``variant``, with its learning rate when ``lrs`` sweeps several."""
    return f"{variant} (lr {lr:g})" if len(config.lrs) > 1 and variant not in NO_AUX_STEPS else variant


def substeps(variant: str, config: Config) -> int:
    """SparseGPT prunes in one shot, as published; the others in ``config.substeps``."""
    return 1 if variant == "SparseGPT" else config.substeps


def run(config: Config | None = None, log: Callable[[str], None] = print) -> list[dict]:
    config = config or Config()
    unknown = [v for v in config.variants if v not in VARIANTS]
    if unknown:
        raise ValueError(f"variants: unknown {unknown}; choose from {list(VARIANTS)}")
    blockwise = [v for v in config.variants if v in PRUNE_VALIDATED]
    if blockwise and not config.sequential:
        raise ValueError(f"variants: {blockwise} trial-prune block by block; use sequential='blocks'")
    calib, val, evals = splits(config)
    base, tokenizer = load_minilm(config.device)
    other = dataclasses.replace(config, max_length=config.other_length) if config.other_length else None
    texts = minilm.sentences(config.seed, config.other_text)[: config.eval_sentences] if config.other_text else []

    def batches(sents: list[str]) -> list[dict]:
        size = config.batch_size
        return [
            tokenize(tokenizer, sents[i : i + size], config.max_length, config.device)
            for i in range(0, len(sents), size)
        ]

    def embed(sents: list[str], cfg: Config):
        return minilm.embed(base, tokenizer, sents, cfg)

    validation = batches(val)
    dense, dense_val = embed(evals, config), embed(val, config)
    dense_other = embed(evals, other) if other else None
    dense_text = embed(texts, config) if texts else None
    weights = copy.deepcopy(base.state_dict())
    rows = []
    for n in sizes(config):
        train = batches(calib[:n])
        for pattern in config.patterns:
            targets = [0.5] if pattern == "2:4" else list(config.sparsities)
            for s in targets:
                for variant, lr in [(v, lr) for v in config.variants for lr in learning_rates(v, config)]:
                    base.load_state_dict(weights)
                    t0 = time.perf_counter()
                    pruner = make(variant, base, dataclasses.replace(config, lr=lr), pattern, len(train), validation, s)
                    pruner.fit(train, steps=fit_steps(variant, config))
                    t1 = time.perf_counter()
                    held = (  # measured outside the variant's wall time
                        pruner.aux_loss(validation, probes=config.probes, seed=config.seed + 1)
                        if isinstance(pruner, fls.FishLegPruner) and not pruner.sequential
                        else float("nan")  # block by block: each block's λ lives only while it is pruned
                    )
                    t2 = time.perf_counter()
                    pruner.prune(s, substeps=substeps(variant, config))
                    seconds = (t1 - t0) + (time.perf_counter() - t2)
                    cosines, agrees = minilm.per_sentence(dense, embed(evals, config))
                    val_cos = minilm.per_sentence(dense_val, embed(val, config))[0]
                    others = minilm.per_sentence(dense_other, embed(evals, other))[0].tolist() if other else []
                    text = minilm.per_sentence(dense_text, embed(texts, config))[0].tolist() if texts else []
                    pruner.finalize()
                    rows.append(
                        dict(
                            calibration=n,
                            variant=label(variant, lr, config),
                            lr=lr,
                            pattern=pattern,
                            sparsity=s,
                            cosine=cosines.mean().item(),
                            val_cosine=val_cos.mean().item(),
                            other_cosine=sum(others) / len(others) if others else float("nan"),
                            text_cosine=sum(text) / len(text) if text else float("nan"),
                            nn_agreement=agrees.mean().item(),
                            held_out_aux=held,
                            validation=_validation(pruner),
                            seconds=seconds,
                            sentence_cosines=cosines.tolist(),
                            other_cosines=others,
                            text_cosines=text,
                        )
                    )
                    cosine = rows[-1]["cosine"]
                    log(
                        f"{n:>4} {rows[-1]['variant']:<28} {pattern:<12} {s:.0%}: cosine {cosine:.4f}  aux {held:.6g}  "
                        f"{seconds:.0f} s"
                    )
    base.load_state_dict(weights)
    return rows


def _validation(pruner: fls.Pruner) -> str:
    """The early-stopping record of an FLS pruner: per run (fit, each refinement), the validated step that won and
    the held-out aux loss at the run's start and at its end ("" without validation); block by block, per block
    ("<block>: …")."""
    if pruner.sequential:
        records = [(name, block["validation"]) for name, block in pruner.block_report().items()]
        return " | ".join(f"{name}: {_runs(checks)}" for name, checks in records if checks)
    fitter = getattr(pruner.method, "fitter", None)
    return _runs(fitter.validation if fitter is not None else [])


def _runs(checks: list[tuple[int, float]]) -> str:
    """(step, held-out aux loss) checks, split into runs (a run starts where the last one ended), each as
    "start → end, kept step k/n"."""
    runs, current = [], []
    for step, value in checks:
        if current and step == current[-1][0]:
            runs.append(current)
            current = []
        current.append((step, value))
    runs += [current] if current else []
    parts = []
    for run in runs:
        best = min(run, key=lambda c: c[1])
        parts.append(f"{run[0][1]:.4g} → {run[-1][1]:.4g}, kept step {best[0] - run[0][0]}/{run[-1][0] - run[0][0]}")
    return "; ".join(parts)


def _paired(row: dict, rows: list[dict], reference: str, key: str = "sentence_cosines") -> str:
    """``row`` − the ``reference`` variant of its cell (calibration size, pattern, sparsity), mean ± standard error
    over the evaluation sentences; "—" where the cell has no such row (or it is the row itself)."""
    cell = (row.get("calibration"), row["pattern"], row["sparsity"])
    ref = next(
        (q for q in rows if q["variant"] == reference and (q.get("calibration"), q["pattern"], q["sparsity"]) == cell),
        None,
    )
    if ref is None or ref is row or len(row.get(key) or []) < 2 or len(ref.get(key) or []) < 2:
        return "—"
    d, e = minilm.paired(row[key], ref[key])
    return f"{d:+.4f} ± {e:.4f}"


_TEXT_NAMES = {"topics": "CPython's language reference", "docstrings": "the standard library's docstrings"}


def _extra_scores(config: Config) -> list[tuple[str, str]]:
    """(column title, row key prefix) of the scores beside the evaluation cosine: at ``other_length`` tokens
    ("other") and on ``other_text`` ("text"), each where asked for."""
    extras = [(f"cosine at {config.other_length} tokens", "other")] if config.other_length else []
    return extras + ([(f"cosine on {config.other_text}", "text")] if config.other_text else [])


def table(rows: list[dict], config: Config) -> str:
    extras = _extra_scores(config)
    other = (
        f" Cosine at {config.other_length} tokens: the evaluation sentences cut at another maximum length, which "
        "no option was chosen on (paired to K-FAC)."
        if config.other_length
        else ""
    ) + (
        f" Cosine on {config.other_text}: {config.eval_sentences} sentences of another text "
        f"({_TEXT_NAMES.get(config.other_text, config.other_text)}), which no option was chosen on (paired to K-FAC)."
        if config.other_text
        else ""
    )
    lines = [
        f"all-MiniLM-L6-v2, {'36 Linear layers' if config.layers == ENCODER_LAYERS else config.layers}, "
        f"{'/'.join(str(n) for n in sizes(config))} calibration / {config.val_sentences} "
        f"validation / {config.eval_sentences} evaluation sentences (max {config.max_length} tokens, batches of "
        f"{config.batch_size}); uniform allocation, adaptive update, γ = {config.damping} × mean diag F̂, K-FAC "
        f"start, {config.substeps} sub-steps"
        + (
            f", {config.label_samples} sampled labels per input in every statistics pass"
            if config.label_samples > 1
            else ""
        )
        + (
            ", every variant block by block (each block on the pruned blocks' outputs, curvature from a Gaussian on "
            "its output; aux steps, early stopping and its record per block, the validation batches captured "
            "block by block; no whole-model held-out aux loss)"
            if config.sequential
            else ""
        )
        + f"; FLS {config.fit_steps} aux steps (Adam, lr {'/'.join(f'{lr:g}' for lr in config.lrs or (config.lr,))}), "
        f"{config.refine_steps} per later sub-step, early stopping every {config.validate_every} steps on the "
        f"validation batches"
        + (
            f"; “annealed”: the start damped by {config.anneal:g}·γ, the fit's γ annealed down to γ"
            if any("annealed" in v for v in config.variants)
            else ""
        )
        + "; SparseGPT with its own defaults, one shot. Cosine to the dense embedding on the "
        f"validation sentences (to choose options by) and on the evaluation sentences; paired differences to "
        f"K-FAC, to FLS's K-FAC start (0 aux steps) and to SparseGPT of the same cell (mean ± standard error over "
        f"sentences); held-out aux loss of λ after the fit (validation batches, {config.probes} fixed probes each; "
        "lower is better); seconds: the variant's fit and prune (the held-out aux loss not included); early "
        "stopping: per run (fit, then each refinement), the validated aux loss at its start "
        f"→ at its end, and the step kept.{other}",
        "",
        "| calibration | pattern | sparsity | variant | validation cosine | cosine | − K-FAC | − K-FAC start | "
        "− SparseGPT |"
        + "".join(f" {title} | − K-FAC |" for title, _ in extras)
        + " held-out aux loss | seconds | early stopping |",
        "|---:|---|---:|---|---:|---:|---:|---:|---:|" + "---:|---:|" * len(extras) + "---:|---:|---|",
    ]
    for r in rows:
        diffs = " | ".join(_paired(r, rows, ref) for ref in REFERENCES)
        others = "".join(
            f" {r.get(f'{key}_cosine', float('nan')):.4f} | {_paired(r, rows, REFERENCE, f'{key}_cosines')} |"
            for _, key in extras
        )
        aux = "—" if r["held_out_aux"] != r["held_out_aux"] else f"{r['held_out_aux']:.6g}"
        lines.append(
            f"| {r.get('calibration', config.calib_sentences)} | {r['pattern']} | {r['sparsity']:.0%} | "
            f"{r['variant']} | {r.get('val_cosine', float('nan')):.4f} | {r['cosine']:.4f} | {diffs} |{others} "
            f"{aux} | {r['seconds']:.0f} | {r.get('validation') or '—'} |"
        )
    return "\n".join(lines)


def write(rows: list[dict], config: Config, out_dir: str | Path, stamp: str | None = None) -> list[Path]:
    """lambda.csv, lambda_sentences.csv (per evaluation sentence, to pair runs of other options) and lambda.md;
    ``stamp`` (default: this checkout now) names where the rows ran."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    fields = [
        "calibration",
        "variant",
        "lr",
        "pattern",
        "sparsity",
        "cosine",
        "val_cosine",
        "other_cosine",
        "text_cosine",
        "nn_agreement",
        "held_out_aux",
        "seconds",
        "validation",
    ]
    write_csv(out / "lambda.csv", fields, rows)
    per_sentence = [
        dict(
            calibration=r.get("calibration", config.calib_sentences),
            variant=r["variant"],
            pattern=r["pattern"],
            sparsity=r["sparsity"],
            sentence=i,
            cosine=f"{c:.6f}",
            other_cosine=f"{r['other_cosines'][i]:.6f}" if r.get("other_cosines") else "",
            text_cosine=f"{r['text_cosines'][i]:.6f}" if i < len(r.get("text_cosines") or []) else "",
        )
        for r in rows
        for i, c in enumerate(r.get("sentence_cosines", []))
    ]
    fields = ["calibration", "variant", "pattern", "sparsity", "sentence", "cosine", "other_cosine", "text_cosine"]
    write_csv(out / "lambda_sentences.csv", fields, per_sentence)
    (out / "lambda.md").write_text(table(rows, config) + f"\n\n{stamp or stamp_line(config.device)}\n")
    return [out / "lambda.csv", out / "lambda_sentences.csv", out / "lambda.md"]


__all__ = ["Config", "SMOKE", "VARIANTS", "run", "table", "write"]
