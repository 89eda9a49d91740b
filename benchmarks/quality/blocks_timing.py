"""SparseGPT's wall time against depth: the library whole-model (each layer group measured by a forward of the
model up to it), the library block by block (``sequential="blocks"``: each block's layers measured in one pass of
the block; and with ``true_sequential=True``, group after group as whole-model mode does) and the authors' flow
(:mod:`benchmarks.quality.sparsegpt_port`), on all-MiniLM-L6-v2 cut to its first 2, 4 and 6 encoder layers.

Same calibration batches, same layers (every Linear of the kept encoder layers), one process; per cell the mean
cosine of the pruned to the dense (same-depth) embedding on the evaluation sentences, and the paired difference of
each row to the port (mean ± standard error over sentences).

``python -m benchmarks quality --model minilm --blocks-timing [--quick]`` writes blocks_timing.csv and
blocks_timing.md.
"""

from __future__ import annotations

import copy
import time
from dataclasses import dataclass
from pathlib import Path

import fls_kernels as fls
from benchmarks.harness import stamp_line, write_study
from benchmarks.quality import digits, gpt, minilm, sparsegpt_port
from fls_kernels.models import load_minilm, tokenize

#: the layers every flow prunes: each Linear of the kept encoder layers
LINEARS = r"bert\.encoder\.layer\.\d+\..*"
VARIANTS = (
    "library, whole model",
    "library, sequential='blocks'",
    "library, sequential='blocks', true_sequential",
    "authors' flow (port)",
)
PORT = VARIANTS[-1]


@dataclass
class Config:
    depths: tuple[int, ...] = (2, 4, 6)
    cells: tuple[str, ...] = ("70%", "2:4")
    calib_sentences: int = 256
    eval_sentences: int = 192
    batch_size: int = 8
    max_length: int = 24
    seed: int = 0
    threads: int = 2
    repeats: int = 3  # each flow timed this many times, interleaved with the others; the table gives the fastest


SMOKE = dict(depths=(1, 2), cells=("2:4",), calib_sentences=16, eval_sentences=16, max_length=12, repeats=1)


def truncated(base, depth: int):
    """A copy of the MiniLM ``base`` with its first ``depth`` encoder layers only."""
    model = copy.deepcopy(base)
    layers = model.bert.encoder.layer
    model.bert.encoder.layer = type(layers)(list(layers)[:depth])
    model.bert.config.num_hidden_layers = depth
    return model


def run(config: Config | None = None, log=print) -> list[dict]:
    config = config or Config()
    settings = minilm.Config(
        calib_sentences=config.calib_sentences,
        eval_sentences=config.eval_sentences,
        max_length=config.max_length,
        seed=config.seed,
    )
    calib, evals = minilm.splits(settings)
    base, tokenizer = load_minilm("cpu")
    batches = [
        tokenize(tokenizer, calib[i : i + config.batch_size], config.max_length, "cpu")
        for i in range(0, len(calib), config.batch_size)
    ]
    rows = []
    with digits.torch_threads(config.threads):
        for depth in config.depths:
            dense_model = truncated(base, depth)
            dense = minilm.embed(dense_model, tokenizer, evals, settings)
            for cell in config.cells:
                pattern, sparsity = gpt._cell(cell)
                cell_rows = {}
                for _ in range(config.repeats):
                    for variant in VARIANTS:
                        model = copy.deepcopy(dense_model).eval()
                        seconds = _prune(variant, model, batches, pattern, sparsity)
                        if variant in cell_rows:
                            cell_rows[variant]["seconds"] = min(cell_rows[variant]["seconds"], seconds)
                            continue
                        cosines, _ = minilm.per_sentence(dense, minilm.embed(model, tokenizer, evals, settings))
                        cell_rows[variant] = dict(
                            depth=depth,
                            cell=cell,
                            variant=variant,
                            seconds=seconds,
                            cosine=cosines.mean().item(),
                            sentence_cosines=cosines.tolist(),
                        )
                for variant, row in cell_rows.items():
                    rows.append(row)
                    log(f"depth {depth} {cell:>4} {variant:<30} {row['seconds']:6.1f} s  cosine {row['cosine']:.4f}")
    return rows


def _prune(variant: str, model, batches: list, pattern: str, sparsity: float) -> float:
    """Prune ``model`` in ``variant``'s flow; its wall time in seconds."""
    start = time.perf_counter()
    if variant == PORT:
        n, m = (2, 4) if pattern == "2:4" else (0, 0)
        sparsegpt_port.prune(model, list(model.bert.encoder.layer), batches, sparsity, n=n, m=m)
    else:
        pruner = fls.SparseGPTPruner(
            model,
            pattern=pattern,
            sequential="blocks" if "blocks" in variant else None,
            true_sequential=variant.endswith("true_sequential"),
            include=LINEARS,
        )
        pruner.fit(batches)
        pruner.prune(sparsity)
        pruner.finalize()
    return time.perf_counter() - start


def table(rows: list[dict], config: Config) -> str:
    c = config
    lines = [
        f"all-MiniLM-L6-v2 cut to its first {', '.join(map(str, c.depths))} encoder layers (every Linear of them "
        f"pruned), {c.calib_sentences} calibration sentences in batches of {c.batch_size} (max {c.max_length} tokens), "
        f"{c.eval_sentences} evaluation sentences; SparseGPT with its defaults (dampening 0.01, blocks of 128) in "
        f"each flow, {c.threads} CPU threads; seconds: the fastest of {c.repeats} runs of each flow, interleaved. "
        "Cosine to the dense embedding of the same depth; paired difference to "
        "the authors' flow (mean ± standard error over sentences).",
        "",
        "| layers | cell | flow | seconds | × the port's | cosine | − port |",
        "|---:|---|---|---:|---:|---:|---:|",
    ]
    for r in rows:
        port = next(p for p in rows if (p["depth"], p["cell"], p["variant"]) == (r["depth"], r["cell"], PORT))
        diff = (
            "—"
            if r is port
            else "{:+.4f} ± {:.4f}".format(*minilm.paired(r["sentence_cosines"], port["sentence_cosines"]))
        )
        ratio = r["seconds"] / port["seconds"]
        lines.append(
            f"| {r['depth']} | {r['cell']} | {r['variant']} | {r['seconds']:.1f} | {ratio:.2f} | {r['cosine']:.4f} "
            f"| {diff} |"
        )
    return "\n".join(lines)


def write(rows: list[dict], config: Config, out_dir: str | Path, stamp: str | None = None) -> list[Path]:
    """blocks_timing.csv and blocks_timing.md."""
    fields = ["depth", "cell", "variant", "seconds", "cosine"]
    return list(write_study(out_dir, "blocks_timing", fields, rows, table(rows, config), stamp or stamp_line("cpu")))


__all__ = ["SMOKE", "VARIANTS", "Config", "run", "table", "truncated", "write"]
