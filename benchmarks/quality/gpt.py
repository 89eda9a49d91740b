"""Perplexity of a small GPT pruned by each method: the causal-LM study a CPU can run (no pretrained causal LM ships
offline, so one is trained here, once, on CPython's documentation and cached).

Text: CPython's bundled documentation (``pydoc_data.topics``) as running text, cut into four disjoint segments:
training (the GPT and its BPE tokenizer), calibration (``samples`` windows of ``seq_len`` tokens), validation
(windows to choose options on) and evaluation (the table). Each method prunes a fresh copy of the cached model
through the registry (``fls_kernels.llm.RECIPES``: FLS and K-FAC with the transformer recipe, the others with their
defaults; the decoder blocks' layers, embeddings and LM head dense), one cell at a time: 50% and 70% unstructured and
2:4. Reported: perplexity exp(mean next-token NLL) on the validation and evaluation windows; the paired difference
of each method's per-window mean NLL to SparseGPT's (nats per token, mean ± standard error over the evaluation
windows; negative: better than SparseGPT); seconds of fit + prune; and the bytes the method holds beside the model.

``python -m benchmarks quality --model gpt [--quick] [--set FIELD=VALUE …]`` writes gpt.csv, gpt_windows.csv and
gpt.md.
"""

from __future__ import annotations

import json
import math
import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

import fls_kernels as fls
from benchmarks.harness import stamp_line, write_csv, write_study
from benchmarks.quality import digits, minilm
from fls_kernels import llm
from fls_kernels.pruning.method import has_option

CELLS = ("50%", "70%", "2:4")
REFERENCE = "sparsegpt"


@dataclass
class Config:
    layers: int = 6
    width: int = 256
    heads: int = 4
    vocab: int = 2048
    seq_len: int = 128
    train_steps: int = 600
    train_batch: int = 16
    lr: float = 1e-3
    samples: int = 64  # calibration windows
    val_windows: int = 32
    eval_windows: int | None = None  # None: every window the evaluation segment holds
    batch_size: int = 8
    #: registry names; "<name>@blocks": the same method block by block (``sequential="blocks"``)
    methods: tuple[str, ...] = (
        "fls",
        "fls@blocks",
        "fls@blocks+200",
        "kfac",
        "kfac@blocks",
        "obd",
        "sparsegpt",
        "sparsegpt@blocks",
        "wanda",
        "magnitude",
    )
    cells: tuple[str, ...] = CELLS
    cache: str = "out/gpt_model"  # the trained GPT and tokenizer ("": train in memory, cache nothing)
    seed: int = 0
    threads: int = 2  # torch threads of the whole run
    #: sampled labels per input in every statistics pass of the methods that take it (FLS's start, K-FAC, OBD)
    label_samples: int = 1
    #: seed of the methods' own draws (sampled labels, FLS's probes) where they take one; None: their default
    method_seed: int | None = None
    #: aux steps between the trial prunes of a "/prune" method's fit
    validate_every: int = 25


#: a CI-sized run: a tiny GPT, a few steps, two methods
SMOKE = dict(
    layers=2,
    width=32,
    heads=2,
    vocab=200,
    seq_len=32,
    train_steps=30,
    train_batch=8,
    samples=4,
    val_windows=4,
    eval_windows=8,
    batch_size=4,
    methods=("fls", "fls@blocks+2", "sparsegpt"),
    cells=("50%", "2:4"),
    cache="",
)


def text() -> str:
    """CPython's bundled documentation as one running text (topics in sorted order, whitespace collapsed)."""
    from pydoc_data.topics import topics

    return re.sub(r"\s+", " ", " ".join(topics[k] for k in sorted(topics)))


def segments(config: Config) -> dict[str, str]:
    """Disjoint training / calibration / validation / evaluation text: the last 30% of the characters hold the
    three held-out segments (10% each), the first 70% train the GPT."""
    full = text()
    n = len(full)
    cut = [0, int(0.7 * n), int(0.8 * n), int(0.9 * n), n]
    return {name: full[cut[i] : cut[i + 1]] for i, name in enumerate(("train", "calib", "val", "eval"))}


def _model_config(config: Config) -> dict:
    fields = ("layers", "width", "heads", "vocab", "seq_len", "train_steps", "train_batch", "lr", "seed")
    return {k: getattr(config, k) for k in fields}


def trained(config: Config, log: Callable[[str], None] = print):
    """(GPT, tokenizer): the cached ones when ``config.cache`` holds a model trained with this configuration,
    else trained now on the training segment (and cached)."""
    import transformers

    cache = Path(config.cache) if config.cache else None
    if cache is not None and (cache / "training.json").exists():
        if json.loads((cache / "training.json").read_text()) == _model_config(config):
            model = transformers.AutoModelForCausalLM.from_pretrained(cache, local_files_only=True)
            return model.eval(), transformers.AutoTokenizer.from_pretrained(cache, local_files_only=True)
    model, tokenizer = train(config, log)
    if cache is not None:
        model.save_pretrained(cache)
        tokenizer.save_pretrained(cache)
        (cache / "training.json").write_text(json.dumps(_model_config(config)) + "\n")
    return model, tokenizer


def bpe_tokenizer(text: str, vocab: int):
    """A BPE tokenizer (whitespace pre-splitting, ``<unk>``) of ``vocab`` entries trained on ``text``, as a
    transformers tokenizer (``save_pretrained`` / ``AutoTokenizer`` round trip)."""
    import tokenizers
    import transformers

    bpe = tokenizers.Tokenizer(tokenizers.models.BPE(unk_token="<unk>"))
    bpe.pre_tokenizer = tokenizers.pre_tokenizers.Whitespace()
    trainer = tokenizers.trainers.BpeTrainer(vocab_size=vocab, special_tokens=["<unk>"], show_progress=False)
    bpe.train_from_iterator([text], trainer)
    return transformers.PreTrainedTokenizerFast(tokenizer_object=bpe, unk_token="<unk>")


def train(config: Config, log: Callable[[str], None] = print):
    """A GPT-2-architecture model and a BPE tokenizer (:func:`bpe_tokenizer`) trained on the training segment:
    AdamW, linear warm-up over 5% of the steps then cosine decay, random windows of ``seq_len`` tokens."""
    import transformers

    train_text = segments(config)["train"]
    tokenizer = bpe_tokenizer(train_text, config.vocab)
    ids = tokenizer(train_text, return_tensors="pt", add_special_tokens=False)["input_ids"][0]
    torch.manual_seed(config.seed)
    gpt = transformers.GPT2Config(
        vocab_size=len(tokenizer),
        n_positions=config.seq_len,
        n_embd=config.width,
        n_layer=config.layers,
        n_head=config.heads,
        bos_token_id=0,
        eos_token_id=0,
    )
    model = transformers.GPT2LMHeadModel(gpt)
    opt = torch.optim.AdamW(model.parameters(), lr=config.lr, weight_decay=0.01)
    warm = max(1, config.train_steps // 20)

    def rate(step: int) -> float:
        if step < warm:
            return (step + 1) / warm
        return 0.5 * (1 + math.cos(math.pi * (step - warm) / max(1, config.train_steps - warm)))

    schedule = torch.optim.lr_scheduler.LambdaLR(opt, rate)
    g = torch.Generator().manual_seed(config.seed)
    model.train()
    start = time.perf_counter()
    for step in range(config.train_steps):
        at = torch.randint(0, ids.numel() - config.seq_len, (config.train_batch,), generator=g)
        x = torch.stack([ids[a : a + config.seq_len] for a in at.tolist()])
        loss = model(input_ids=x, labels=x).loss
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        schedule.step()
        if (step + 1) % max(1, config.train_steps // 10) == 0:
            took = time.perf_counter() - start
            log(f"train step {step + 1}/{config.train_steps}: loss {loss.item():.3f} ({took:.0f} s)")
    return model.eval(), tokenizer


def _cell(cell: str) -> tuple[str, float]:
    """(pattern, sparsity) of a cell name: "70%" → unstructured 0.7, "2:4" → 2:4 at 0.5."""
    if ":" in cell:
        n, m = (int(v) for v in cell.split(":"))
        return cell, n / m
    return "unstructured", float(cell.rstrip("%")) / 100


def _method(label: str) -> tuple[str, str | None, int, str]:
    """(registry name, ``sequential``, aux steps, ``validate_by``) of a study label
    ``name[@blocks][+steps][/prune|/prune-last]``: "sparsegpt" → whole model, "sparsegpt@blocks" → block by block,
    "fls@blocks+200" → with 200 aux steps (per block), "fls@blocks+200/prune" → each block's fit validated every
    ``validate_every`` steps on the validation windows by a trial prune (``validate_by="prune"``: the block's output
    error; "/prune-last": the last block's), ending at the λ that pruned them best; ValueError naming ``methods``
    for anything else."""
    match = re.fullmatch(r"([a-z_]+)(@blocks)?(?:\+(\d+))?(?:/(prune|prune-last))?", label)
    if match is None or match[1] not in fls.PRUNERS:
        raise ValueError(
            f"methods: unknown {label!r}; choose from {sorted(fls.PRUNERS)}, each optionally '@blocks', '+<steps>' "
            "and '/prune' or '/prune-last'"
        )
    if match[4] and not (match[2] and match[3] and has_option(fls.PRUNERS[match[1]].method_class, "validate_by")):
        raise ValueError(f"methods: {label!r}: '/prune' validates an FLS fit block by block ('fls@blocks+<steps>')")
    return match[1], "blocks" if match[2] else None, int(match[3] or 0), match[4] or "aux"


def _options(name: str, config: Config) -> dict:
    """The study's options over the recipe of method ``name``: ``label_samples`` and ``method_seed`` (as ``seed``)
    where the method takes them."""
    method = fls.PRUNERS[name].method_class
    chosen: dict = {}
    if config.label_samples != 1 and has_option(method, "label_samples"):
        chosen["label_samples"] = config.label_samples
    if config.method_seed is not None and has_option(method, "seed"):
        chosen["seed"] = config.method_seed
    return chosen


def run(config: Config | None = None, log: Callable[[str], None] = print) -> list[dict]:
    config = config or Config()
    for label in config.methods:
        _method(label)
    with digits.torch_threads(config.threads):
        return _run(config, log)


def _run(config: Config, log: Callable[[str], None]) -> list[dict]:
    model, tokenizer = trained(config, log)
    parts = segments(config)
    calib = llm.windows(tokenizer, parts["calib"], config.samples, config.seq_len, "calib")
    val = llm.windows(tokenizer, parts["val"], config.val_windows, config.seq_len, "val")
    evals = llm.windows(tokenizer, parts["eval"], config.eval_windows, config.seq_len, "eval")
    weights = {k: v.clone() for k, v in model.state_dict().items()}

    def measure(name: str, cell: str, seconds: float, held: int) -> dict:
        nll = llm.window_nll(model, evals, config.batch_size)
        row = dict(
            method=name,
            cell=cell,
            val_perplexity=math.exp(float(llm.window_nll(model, val, config.batch_size).mean())),
            perplexity=math.exp(float(nll.mean())),
            seconds=seconds,
            state_mib=held / 2**20,
            window_nll=nll.tolist(),
        )
        log(f"{cell:>4} {name:<10} perplexity {row['perplexity']:.3f} (validation {row['val_perplexity']:.3f})")
        return row

    rows = [measure("dense", "—", 0.0, 0)]
    for cell in config.cells:
        pattern, sparsity = _cell(cell)
        for method in config.methods:
            model.load_state_dict(weights)
            start = time.perf_counter()
            name, sequential, steps, validate_by = _method(method)
            options = _options(name, config)
            if validate_by != "aux":
                held = llm.batches(val, config.batch_size, str(next(model.parameters()).device))
                options.update(validation=held, validate_by=validate_by, validate_every=config.validate_every)
            pruner = llm.prune_model(
                model,
                name,
                sparsity,
                calib,
                pattern=pattern,
                batch_size=config.batch_size,
                sequential=sequential,
                steps=steps,
                options=options,
            )
            seconds = time.perf_counter() - start
            held = pruner.memory_usage()["total"]
            pruner.finalize()
            rows.append(measure(method, cell, seconds, held))
    model.load_state_dict(weights)
    return rows


def paired(row: dict, rows: list[dict], reference: str = REFERENCE) -> tuple[float, float] | None:
    """(mean, standard error) over the evaluation windows of ``row``'s NLL minus ``reference``'s in its cell."""
    ref = next((r for r in rows if r["method"] == reference and r["cell"] == row["cell"]), None)
    if ref is None or ref is row or len(row["window_nll"]) < 2:
        return None
    return minilm.paired(row["window_nll"], ref["window_nll"])


def table(rows: list[dict], config: Config) -> str:
    c = config
    evaluated = len(rows[0]["window_nll"]) if rows else c.eval_windows
    lines = [
        f"GPT-2-architecture model, {c.layers} blocks of width {c.width} ({c.heads} heads), BPE vocabulary {c.vocab}, "
        f"trained here for {c.train_steps} steps of {c.train_batch} × {c.seq_len} tokens on CPython's documentation; "
        f"{c.samples} calibration / {c.val_windows} validation / {evaluated} evaluation windows of {c.seq_len} "
        "tokens from held-out segments. Methods through the registry (FLS and K-FAC: the transformer recipe — K-FAC "
        "start, adaptive update, uniform allocation, γ = 1e-3 × mean diag F̂, 4 sub-steps; the others: their defaults, "
        "SparseGPT and Wanda one pass; “@blocks”: block by block, each block on the pruned blocks' outputs, "
        "curvature from a Gaussian on the block's output). Perplexity on the validation and evaluation windows; "
        "per-window NLL minus SparseGPT's in the same cell (nats/token, mean ± standard error over evaluation "
        "windows, negative is better); seconds of fit + prune; MiB the method holds beside the model (block by "
        "block: its high-water mark, "
        "captured block inputs included)."
        + (
            f" {c.label_samples} sampled labels per input in every statistics pass of FLS's start, K-FAC and OBD."
            if c.label_samples != 1
            else ""
        )
        + (f" The methods' own draws (labels, probes) from seed {c.method_seed}." if c.method_seed is not None else ""),
        "",
        "| cell | method | validation perplexity | perplexity | NLL − SparseGPT | seconds | state MiB |",
        "|---|---|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        d = paired(r, rows)
        diff = "—" if d is None else f"{d[0]:+.4f} ± {d[1]:.4f}"
        lines.append(
            f"| {r['cell']} | {r['method']} | {r['val_perplexity']:.3f} | {r['perplexity']:.3f} | {diff} | "
            f"{r['seconds']:.0f} | {r['state_mib']:.1f} |"
        )
    return "\n".join(lines)


def write(rows: list[dict], config: Config, out_dir: str | Path, stamp: str | None = None) -> list[Path]:
    """gpt.csv, gpt_windows.csv (per evaluation window, to pair other runs) and gpt.md."""
    fields = ["method", "cell", "val_perplexity", "perplexity", "seconds", "state_mib"]
    csv_path, md = write_study(out_dir, "gpt", fields, rows, table(rows, config), stamp or stamp_line("cpu"))
    windows = [
        dict(method=r["method"], cell=r["cell"], window=i, nll=f"{v:.6f}")
        for r in rows
        for i, v in enumerate(r["window_nll"])
    ]
    windows_path = write_csv(Path(out_dir) / "gpt_windows.csv", ["method", "cell", "window", "nll"], windows)
    return [csv_path, windows_path, md]


__all__ = [
    "CELLS",
    "SMOKE",
    "Config",
    "bpe_tokenizer",
    "paired",
    "run",
    "segments",
    "table",
    "text",
    "train",
    "trained",
    "write",
]
