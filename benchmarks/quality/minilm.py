"""Prune a real pretrained transformer offline: all-MiniLM-L6-v2, FLS vs SparseGPT, Wanda, magnitude, OBD, oBERT
and K-FAC-OBS.

Text: English prose that ships with CPython (``pydoc_data.topics``, the language reference) split into
sentences; a calibration set and a disjoint evaluation set. Every method prunes the 36 attention and FFN Linear
layers (embeddings, LayerNorms and the pooler stay dense) one-shot in K sub-steps, unstructured and 2:4, with
a Gaussian likelihood on the pooled, normalised embedding (the curvature of what the model outputs; oBERT uses
sampled targets since sentences carry no labels). SparseGPT and Wanda reconstruct layer outputs instead, layer by
layer on the inputs of the already-pruned model, each layer to the same sparsity; the curvature methods rank
globally across layers, and "FLS-uniform" is FLS held to the same per-layer sparsity, which separates
allocation from method. Metrics on the evaluation sentences: mean cosine similarity of
pruned to dense embeddings, and top-1 nearest-neighbour agreement (each sentence's most similar other sentence
under the pruned model vs under the dense one).

``python -m benchmarks quality --model minilm [--reduced]`` writes minilm.csv, minilm_sentences.csv (per-sentence
values), minilm.md (with FLS's paired differences to SparseGPT) and minilm.png.
"""

from __future__ import annotations

import ast
import copy
import csv
import dataclasses
import random
import re
import sysconfig
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

from benchmarks.harness import stamp_line, write_csv
from benchmarks.quality import methods
from fls_kernels.models import ENCODER_LAYERS, load_minilm, tokenize


def _fls(allocation: str) -> Callable[..., dict]:
    def options(config: Config, stats: int, pattern: str) -> dict:
        return dict(
            init=config.fls_init,
            init_batches=stats,
            refine_steps=config.fls_refine_steps,
            allocation=allocation,
            update=config.fls_update,
            aux_fisher=config.fls_aux_fisher,
            aux_batches=config.fls_aux_batches,
            relative_damping=config.fls_damping,
            **({"nm_select": config.fls_nm_select} if pattern != "unstructured" else {}),
        )

    return options


def _sparsegpt(config: Config, stats: int, pattern: str) -> dict:
    select = {"nm_select": config.sparsegpt_nm_select} if pattern != "unstructured" else {}
    return dict(dampening=config.sparsegpt_dampening, **select)


_BLOCKS = {"sequential": "blocks"}

#: the study's rows (label → registry method, options from (config, statistics batches, pattern)); every other
#: registered method runs with its defaults under its registry name
STUDY: methods.Study = {
    "FLS": ("fls", _fls("global")),
    "FLS-uniform": ("fls", _fls("uniform")),
    "SparseGPT": ("sparsegpt", _sparsegpt),
    "Wanda": ("wanda", None),
    "magnitude": ("magnitude", None),
    "OBD": ("obd", lambda config, stats, pattern: dict(stat_batches=stats)),
    "oBERT": (
        "obert",
        lambda config, stats, pattern: dict(fisher="sampled", num_grads=config.obert_grads, grad_chunk=8),
    ),
    "K-FAC": (
        "kfac",
        lambda config, stats, pattern: dict(
            stat_batches=stats, update=config.kfac_update, allocation=config.kfac_allocation
        ),
    ),
    # block by block (the aux steps per block); K-FAC with FLS's solver, allocation and damping
    "FLS-blocks": ("fls", lambda config, stats, pattern: {**_fls("uniform")(config, stats, pattern), **_BLOCKS}),
    "K-FAC-blocks": (
        "kfac",
        lambda config, stats, pattern: dict(
            stat_batches=stats,
            update=config.fls_update,
            allocation="uniform",
            relative_damping=config.fls_damping,
            **({"nm_select": config.fls_nm_select} if pattern != "unstructured" else {}),
            **_BLOCKS,
        ),
    ),
}
METHODS = methods.labels(STUDY)
LAYERWISE = tuple(m for m in METHODS if methods.layerwise(STUDY, m))  # one-shot in one pass


@dataclass
class Config:
    sparsities: tuple[float, ...] = (0.5, 0.7, 0.8)
    patterns: tuple[str, ...] = ("unstructured", "2:4")
    methods: tuple[str, ...] = METHODS
    calib_sentences: int = 512
    eval_sentences: int = 512
    batch_size: int = 16
    max_length: int = 64
    substeps: int = 8
    fls_init: str = "kfac"
    fls_fit_steps: int = 2000
    fls_refine_steps: int = 50
    obert_grads: int = 1024
    stat_batches: int = 0  # 0: every calibration batch
    relative_damping: float = 1.0
    fls_damping: float = 1e-4
    fls_update: str = "adaptive"
    fls_aux_fisher: str = "exact"
    fls_aux_batches: int | None = None
    fls_nm_select: str = "greedy"
    kfac_update: str = "diagonal"
    kfac_allocation: str = "global"
    sparsegpt_dampening: float = 0.01
    sparsegpt_nm_select: str = "greedy"
    device: str = "cpu"
    seed: int = 0


REDUCED = dict(
    calib_sentences=64,
    eval_sentences=192,
    batch_size=8,
    max_length=24,
    substeps=2,
    fls_fit_steps=20,
    fls_refine_steps=3,
    obert_grads=64,
)


def parse_overrides(items: list[str], config_class: type = Config) -> dict:
    """``["substeps=8", "methods=FLS,K-FAC", "sparsities=0.7"]`` → typed fields of ``config_class`` (a dataclass
    with defaults); a list splits at commas not followed by a space, so "refined, few steps,K-FAC" is two names."""
    fields = {f.name: f for f in dataclasses.fields(config_class)}
    out = {}
    for item in items:
        name, sep, value = item.partition("=")
        if not sep or name not in fields:
            raise ValueError(f"{item!r}: expected FIELD=VALUE with FIELD one of {sorted(fields)}")
        default = getattr(config_class(), name)
        if isinstance(default, tuple):
            kind = type(default[0]) if default else _element_type(fields[name])
            out[name] = tuple(kind(v) for v in re.split(r",(?! )", value))  # ", " stays inside a name
        elif default is None:  # an optional count
            out[name] = None if value.lower() == "none" else int(value)
        else:
            out[name] = type(default)(value)
    return out


def _element_type(field: dataclasses.Field) -> type:
    """The element type of a tuple field with an empty default, from its annotation (``tuple[int, ...]`` → int)."""
    annotation = str(field.type)
    return next((kind for kind in (int, float) if annotation.startswith(f"tuple[{kind.__name__}")), str)


#: the text pools :func:`sentences` draws from
TEXTS = ("topics", "docstrings")


def sentences(seed: int = 0, text: str = "topics") -> list[str]:
    """Unique English sentences (6–40 words, mostly letters), shuffled: from CPython's bundled documentation
    (``text="topics"``, the language reference) or from the docstrings of its standard library's top-level modules
    (``"docstrings"``: other prose about other things, less any sentence the topics also hold)."""
    from pydoc_data.topics import topics

    reference = re.sub(r"\s+", " ", " ".join(topics[k] for k in sorted(topics)))
    if text == "topics":
        source = reference
    elif text == "docstrings":
        source = re.sub(r"\s+", " ", " ".join(_docstrings()))
    else:
        raise ValueError(f"text: expected one of {TEXTS}, got {text!r}")
    parts = re.split(r"(?<=[.!?])\s+(?=[A-Z])", source)
    good = sorted(
        {p for p in parts if 6 <= len(p.split()) <= 40 and sum(c.isalpha() or c == " " for c in p) > 0.9 * len(p)}
    )
    if text != "topics":
        good = [p for p in good if p not in reference]
    random.Random(seed).shuffle(good)
    return good


def _docstrings() -> list[str]:
    """The docstrings (module, class, function) of the standard library's top-level ``*.py`` modules, in file
    order, read without importing them."""
    root = Path(sysconfig.get_paths()["stdlib"])
    docs = []
    for path in sorted(root.glob("*.py")):
        try:
            tree = ast.parse(path.read_text(encoding="utf-8"))
        except (SyntaxError, UnicodeDecodeError):
            continue
        kinds = (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)
        docs += [d for node in ast.walk(tree) if isinstance(node, kinds) and (d := ast.get_docstring(node))]
    return docs


def splits(config: Config) -> tuple[list[str], list[str]]:
    """Disjoint calibration and evaluation sentences."""
    pool = sentences(config.seed)
    needed = config.calib_sentences + config.eval_sentences
    if len(pool) < needed:
        raise ValueError(f"only {len(pool)} sentences available, {needed} requested")
    return pool[: config.calib_sentences], pool[config.calib_sentences : needed]


@torch.no_grad()
def embed(model, tokenizer, sents: list[str], config: Config) -> torch.Tensor:
    model.eval()
    out = [
        model(**tokenize(tokenizer, sents[i : i + 64], config.max_length, config.device))
        for i in range(0, len(sents), 64)
    ]
    return torch.cat(out).float().cpu()


def per_sentence(dense: torch.Tensor, pruned: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per evaluation sentence: cosine similarity of pruned to dense embedding, and whether its top-1 nearest
    other sentence under the pruned model is the one under the dense model (1.0 / 0.0)."""
    cosine = torch.nn.functional.cosine_similarity(dense, pruned)

    def neighbours(e: torch.Tensor) -> torch.Tensor:
        e = torch.nn.functional.normalize(e, dim=-1)
        sims = e @ e.T
        sims.fill_diagonal_(float("-inf"))
        return sims.argmax(1)

    return cosine, (neighbours(dense) == neighbours(pruned)).float()


def paired(a: list[float], b: list[float]) -> tuple[float, float]:
    """(mean, standard error) of the per-sentence differences a − b: mean(d) ± sd(d)/√N."""
    d = torch.tensor(a, dtype=torch.float64) - torch.tensor(b, dtype=torch.float64)
    if len(d) < 2:
        raise ValueError(f"paired: needs at least 2 sentences, got {len(d)}")
    return d.mean().item(), (d.std() / len(d) ** 0.5).item()


def make(method: str, model, config: Config, pattern: str, num_batches: int):
    """The pruner of row ``method`` (:data:`STUDY`, or a registered method by its name; ValueError otherwise) on
    the encoder's Linear layers; statistics over ``config.stat_batches`` batches (0: all ``num_batches``)."""
    stats = config.stat_batches or num_batches
    shared = dict(likelihood="gaussian", relative_damping=config.relative_damping, seed=config.seed)
    context = dict(config=config, stats=stats, pattern=pattern)
    return methods.build(STUDY, method, model, shared, context, include=ENCODER_LAYERS, pattern=pattern)


def run(config: Config | None = None, log=print) -> list[dict]:
    config = config or Config()
    calib, evals = splits(config)
    base, tokenizer = load_minilm(config.device)
    batches = [
        tokenize(tokenizer, calib[i : i + config.batch_size], config.max_length, config.device)
        for i in range(0, len(calib), config.batch_size)
    ]
    dense = embed(base, tokenizer, evals, config)
    weights = copy.deepcopy(base.state_dict())
    rows = []
    for method in config.methods:
        start = time.perf_counter()
        fitted_state = None
        steps = config.fls_fit_steps if method.startswith("FLS") else 0
        for pattern in config.patterns:
            targets = [0.5] if pattern == "2:4" else list(config.sparsities)
            base.load_state_dict(weights)
            pruner = make(method, base, config, pattern, len(batches))
            if fitted_state is None:
                pruner.fit(batches, steps=steps)
                fitted_state = pruner.state_dict()
            else:
                pruner.load_state_dict(fitted_state)
                pruner.fit(batches, steps=steps if pruner.sequential else 0)  # block by block: fitted as it prunes
            for s in targets:
                pruner.load_state_dict(fitted_state)
                base.load_state_dict(weights)
                t0 = time.perf_counter()
                pruner.prune(s, substeps=1 if method in LAYERWISE else config.substeps)
                cosines, agrees = per_sentence(dense, embed(base, tokenizer, evals, config))
                cosine, agreement = cosines.mean().item(), agrees.mean().item()
                rows.append(
                    dict(
                        method=method,
                        pattern=pattern,
                        sparsity=s,
                        cosine=cosine,
                        nn_agreement=agreement,
                        prune_seconds=time.perf_counter() - t0,
                        sentence_cosines=cosines.tolist(),
                        sentence_agreements=agrees.tolist(),
                    )
                )
                log(f"{method:<9} {pattern:<12} {s:.0%}: cosine {cosine:.4f}  NN agreement {agreement:.3f}")
            pruner.finalize()
        for r in rows:
            if r["method"] == method:
                r["method_seconds"] = time.perf_counter() - start
    base.load_state_dict(weights)
    return rows


def table(rows: list[dict], config: Config) -> str:
    cells = sorted({(r["pattern"], r["sparsity"]) for r in rows}, key=lambda c: (c[0] != "unstructured", c[1]))
    lines = [
        f"all-MiniLM-L6-v2, 36 Linear layers, {config.calib_sentences} calibration / {config.eval_sentences} "
        f"evaluation sentences (max {config.max_length} tokens), one-shot in {config.substeps} sub-steps; FLS "
        f"{config.fls_init} start + {config.fls_fit_steps} aux steps, {config.fls_refine_steps} per sub-step; "
        f"FLS update {config.fls_update!r}, γ = {config.fls_damping} × mean diag F̂; K-FAC-OBS update "
        f"{config.kfac_update!r}; oBERT m = {config.obert_grads}; OBD, oBERT, K-FAC-OBS γ = "
        f"{config.relative_damping} × mean diag F̂; statistics on "
        f"{'every calibration batch' if not config.stat_batches else f'{config.stat_batches} batches'}; "
        f"SparseGPT dampening {config.sparsegpt_dampening} × mean diag H, blocks of 128; SparseGPT, Wanda and "
        f"FLS-uniform prune every layer to the same sparsity, the others rank globally; N:M groups chosen "
        f"{config.fls_nm_select} (FLS) / {config.sparsegpt_nm_select} (SparseGPT); device {config.device}. "
        "Mean cosine to the dense embedding / top-1 nearest-neighbour agreement.",
        "",
        "| pattern | sparsity | " + " | ".join(config.methods) + " |",
        "|---|---:|" + "---:|" * len(config.methods),
    ]
    for pattern, s in cells:
        row = []
        for m in config.methods:
            r = next((r for r in rows if r["method"] == m and r["pattern"] == pattern and r["sparsity"] == s), None)
            row.append(f"{r['cosine']:.4f} / {r['nn_agreement']:.3f}" if r else "—")
        lines.append(f"| {pattern} | {s:.0%} | " + " | ".join(row) + " |")
    seconds = {r["method"]: r.get("method_seconds", 0.0) for r in rows}
    lines += ["", "Wall-clock per method: " + ", ".join(f"{m} {seconds.get(m, 0):.0f} s" for m in config.methods)]
    return "\n".join(lines + differences(rows, config))


def differences(rows: list[dict], config: Config, reference: str = "SparseGPT") -> list[str]:
    """Table lines: FLS's per-sentence paired differences to ``reference`` per cell, mean ± standard error (empty
    without per-sentence values or without both methods)."""
    found = {(r["method"], r["pattern"], r["sparsity"]): r for r in rows if "sentence_cosines" in r}
    present = {m for m, _, _ in found}
    contenders = [m for m in config.methods if (m.startswith("FLS") or m.endswith("-blocks")) and m in present]
    cells = sorted({(p, s) for _, p, s in found}, key=lambda c: (c[0] != "unstructured", c[1]))
    if reference not in present or not contenders:
        return []
    lines = [
        "",
        f"Paired over the {config.eval_sentences} evaluation sentences, FLS − {reference}: mean ± standard error of "
        "the per-sentence difference in cosine / in NN agreement (a difference within two standard errors is a tie).",
        "",
        "| pattern | sparsity | " + " | ".join(f"{m} − {reference}" for m in contenders) + " |",
        "|---|---:|" + "---:|" * len(contenders),
    ]
    for pattern, s in cells:
        ref = found.get((reference, pattern, s))
        row = []
        for m in contenders:
            mine = found.get((m, pattern, s))
            if ref is None or mine is None:
                row.append("—")
                continue
            dc, ec = paired(mine["sentence_cosines"], ref["sentence_cosines"])
            dn, en = paired(mine["sentence_agreements"], ref["sentence_agreements"])
            row.append(f"{dc:+.4f} ± {ec:.4f} / {dn:+.3f} ± {en:.3f}")
        lines.append(f"| {pattern} | {s:.0%} | " + " | ".join(row) + " |")
    return lines


def write(rows: list[dict], config: Config, out_dir: str | Path, stamp: str | None = None) -> list[Path]:
    """minilm.csv, minilm_sentences.csv (per-sentence values), minilm.md and minilm.png; ``stamp`` (default:
    this checkout now) names where the rows ran."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    fields = ["method", "pattern", "sparsity", "cosine", "nn_agreement", "prune_seconds", "method_seconds"]
    write_csv(out / "minilm.csv", fields, rows)
    with open(out / "minilm_sentences.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["method", "pattern", "sparsity", "sentence", "cosine", "nn_agreement"])
        for r in rows:
            for i, (c, a) in enumerate(zip(r.get("sentence_cosines", []), r.get("sentence_agreements", []))):
                w.writerow([r["method"], r["pattern"], r["sparsity"], i, f"{c:.6f}", int(a)])
    (out / "minilm.md").write_text(table(rows, config) + f"\n\n{stamp or stamp_line(config.device)}\n")
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for m in config.methods:
        pts = sorted((r["sparsity"], r["cosine"]) for r in rows if r["method"] == m and r["pattern"] == "unstructured")
        if pts:
            ax.plot([100 * s for s, _ in pts], [c for _, c in pts], marker="o", label=m)
    ax.set_xlabel("sparsity (%)")
    ax.set_ylabel("mean cosine to dense embedding")
    ax.set_title("all-MiniLM-L6-v2, one-shot, unstructured")
    if ax.get_lines():
        ax.legend()
    fig.tight_layout()
    fig.savefig(out / "minilm.png", dpi=120)
    plt.close(fig)
    return [out / "minilm.csv", out / "minilm_sentences.csv", out / "minilm.md", out / "minilm.png"]
