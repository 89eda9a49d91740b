"""Prune a Hugging Face causal LM from a local folder: calibration windows of a text file, perplexity before and
after, the pruned model saved with ``save_pretrained`` (``python -m fls_kernels prune``).

    perplexity = exp( Σ_windows Σ_t −log p(x_{t+1} | x_≤t) / Σ_windows (L − 1) )

over non-overlapping windows of L tokens. transformers is imported only here, on use; nothing is downloaded.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from torch import nn

import fls_kernels as fls

#: the methods of the command: every registered one, by its registry name
METHODS = tuple(sorted(fls.PRUNERS))
#: each method's options on a transformer: FLS and K-FAC-OBS the README's transformer recipe (K-FAC start, adaptive
#: column update, uniform allocation, no aux steps), the others their published defaults
RECIPES: dict[str, dict] = {
    "fls": dict(init="kfac", update="adaptive", relative_damping=1e-3, allocation="uniform", refine_steps=0),
    "kfac": dict(update="adaptive", relative_damping=1e-3, allocation="uniform"),
}
#: the files of which a model folder must hold one for its tokenizer to load
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "tokenizer.model", "vocab.json")
SUBSTEPS = 4  # sub-steps of the methods that score globally; layer-by-layer methods prune in one pass


class InputError(ValueError):
    """A bad input of the command, naming the argument (the command prints it and exits with status 2)."""

    def __init__(self, argument: str, message: str) -> None:
        super().__init__(f"{argument}: {message}")
        self.argument = argument


@dataclass
class Report:
    """What ``prune`` did, written as JSON beside the pruned model."""

    model: str
    method: str
    sparsity: float
    pattern: str
    sequential: str | None
    aux_steps: int
    samples: int
    seq_len: int
    layers: int
    sparsity_reached: float
    model_sparsity: float
    perplexity_before: float | None
    perplexity_after: float | None
    eval_windows: int
    seconds: float
    versions: dict = field(default_factory=dict)


def _check_target(pattern: str, sparsity: object) -> None:
    """:class:`InputError` naming --pattern (unknown) or --sparsity (outside [0, 1), or not j/M of an N:M pattern)
    — the pruner's own checks, made before the model is loaded."""
    from fls_kernels.pruning import checks
    from fls_kernels.pruning.patterns import NMPattern, parse_pattern
    from fls_kernels.pruning.targets import nm_zeros

    try:
        parsed = parse_pattern(pattern)
    except (ValueError, TypeError) as exc:
        raise InputError("--pattern", str(exc)) from None
    try:
        if isinstance(parsed, NMPattern):
            nm_zeros(sparsity, parsed, "--sparsity")
        else:
            checks.sparsity("--sparsity", sparsity)
    except (ValueError, TypeError) as exc:
        raise InputError("--sparsity", str(exc).removeprefix("--sparsity: ")) from None


def load(model_dir: str | Path, device: str = "cpu"):
    """(model, tokenizer) of a local causal-LM folder, in eval mode on ``device``; :class:`InputError` naming
    MODEL_DIR when the folder is missing, holds no causal LM or no tokenizer."""
    import transformers

    path = Path(model_dir)
    if not path.is_dir():
        raise InputError("MODEL_DIR", f"{str(path)!r} is not a folder")
    try:
        config = transformers.AutoConfig.from_pretrained(path, local_files_only=True)
    except (OSError, ValueError) as exc:
        raise InputError("MODEL_DIR", f"{str(path)!r} holds no model config ({exc})") from None
    if type(config) not in transformers.MODEL_FOR_CAUSAL_LM_MAPPING:
        raise InputError("MODEL_DIR", f"{str(path)!r} is a {type(config).__name__}, not a causal language model")
    if not any((path / name).is_file() for name in TOKENIZER_FILES):
        raise InputError("MODEL_DIR", f"{str(path)!r} holds no tokenizer (none of {', '.join(TOKENIZER_FILES)})")
    try:
        tokenizer = transformers.AutoTokenizer.from_pretrained(path, local_files_only=True)
    except (OSError, ValueError, TypeError) as exc:
        raise InputError("MODEL_DIR", f"{str(path)!r}: its tokenizer does not load ({exc})") from None
    model = transformers.AutoModelForCausalLM.from_pretrained(path, local_files_only=True).to(device)
    return model.eval(), tokenizer


def windows(tokenizer, text: str, count: int | None, length: int, argument: str) -> torch.Tensor:
    """[count, length] token ids: the first ``count`` non-overlapping windows of the tokenised ``text`` (None: all
    of them); :class:`InputError` naming ``argument`` when the text holds fewer."""
    ids = tokenizer(text, return_tensors="pt", add_special_tokens=False)["input_ids"][0]
    have = ids.numel() // length
    want = have if count is None else count
    if have < max(want, 1):
        need = max(want, 1) * length
        raise InputError(argument, f"{ids.numel()} tokens, too few for {max(want, 1)} windows of {length} ({need})")
    return ids[: want * length].view(want, length)


def batches(ids: torch.Tensor, size: int, device: str) -> list[dict[str, torch.Tensor]]:
    """Model inputs of ``size`` windows each."""
    return [{"input_ids": ids[i : i + size].to(device)} for i in range(0, len(ids), size)]


@torch.no_grad()
def window_nll(model: nn.Module, ids: torch.Tensor, batch_size: int = 8) -> torch.Tensor:
    """[n] float64: each window's mean next-token negative log-likelihood (the L − 1 predicted tokens of ``ids``
    [n, L])."""
    device = next(model.parameters()).device
    out = []
    for batch in batches(ids, batch_size, str(device)):
        x = batch["input_ids"]
        logits = model(input_ids=x).logits[:, :-1].float()
        nll = nn.functional.cross_entropy(logits.transpose(1, 2), x[:, 1:], reduction="none")  # [b, L − 1]
        out.append(nll.double().mean(1).cpu())
    return torch.cat(out)


def perplexity(model: nn.Module, ids: torch.Tensor, batch_size: int = 8) -> float:
    """exp of the mean next-token negative log-likelihood over the windows ``ids`` [n, L] (float64 accumulation)."""
    return math.exp(float(window_nll(model, ids, batch_size).mean()))


def prune_model(
    model: nn.Module,
    method: str,
    sparsity: float,
    calib_ids: torch.Tensor,
    *,
    pattern: str = "unstructured",
    batch_size: int = 8,
    progress: bool = False,
    sequential: str | None = None,
    steps: int = 0,
    options: Mapping[str, object] | None = None,
) -> fls.Pruner:
    """The registry's pruner of ``method`` on ``model`` with its transformer options (:data:`RECIPES`, then
    ``options`` over them), fitted on the calibration windows ``calib_ids`` [n, L] with ``steps`` aux steps and pruned
    to ``sparsity`` — in :data:`SUBSTEPS` sub-steps, or one pass for a layer-by-layer method; not finalized.
    ``sequential="blocks"``: decoder block by decoder block (:mod:`fls_kernels.pruning.sequential`; ``steps`` per
    block)."""
    cls = fls.PRUNERS[method]
    chosen = {**RECIPES.get(method, {}), **(options or {})}
    pruner = cls(model, pattern=pattern, progress=progress, sequential=sequential, **chosen)
    device = str(next(model.parameters()).device)
    pruner.fit(batches(calib_ids, batch_size, device), steps=steps)
    pruner.prune(sparsity, substeps=1 if cls.method_class.layerwise else SUBSTEPS)
    return pruner


def prune(
    model_dir: str | Path,
    *,
    method: str,
    sparsity: float,
    calib: str | Path,
    out: str | Path,
    pattern: str = "unstructured",
    samples: int = 128,
    seq_len: int = 512,
    eval_text: str | Path | None = None,
    eval_windows: int | None = None,
    batch_size: int = 8,
    device: str = "cpu",
    progress: bool = False,
    sequential: str | None = None,
    steps: int = 0,
    log=print,
) -> Report:
    """Load, measure, prune, save and report: see the module docstring. Every input is checked before the
    model is touched (:class:`InputError`)."""
    if method not in METHODS:
        raise InputError("--method", f"unknown {method!r}; choose from {list(METHODS)}")
    _check_target(pattern, sparsity)
    texts = {"--calib": calib, "--eval": eval_text}
    for argument, path in texts.items():
        if path is not None and not Path(path).is_file():
            raise InputError(argument, f"{str(path)!r} is not a file")
    start = time.perf_counter()
    model, tokenizer = load(model_dir, device)
    calib_ids = windows(tokenizer, Path(calib).read_text(), samples, seq_len, "--calib")
    eval_ids = windows(tokenizer, Path(eval_text).read_text(), eval_windows, seq_len, "--eval") if eval_text else None
    before = perplexity(model, eval_ids, batch_size) if eval_ids is not None else None
    if before is not None:
        log(f"perplexity before: {before:.3f} ({len(eval_ids)} windows of {seq_len} tokens)")
    pruner = prune_model(
        model,
        method,
        sparsity,
        calib_ids,
        pattern=pattern,
        batch_size=batch_size,
        progress=progress,
        sequential=sequential,
        steps=steps,
    )
    reached = pruner.sparsity()
    log(f"{type(pruner).__name__}: {len(pruner.layer_names)} layers, {pruner.num_prunable()} prunable weights")
    model_sparsity = pruner.model_sparsity()
    layers = len(pruner.layer_names)
    pruner.finalize()
    after = perplexity(model, eval_ids, batch_size) if eval_ids is not None else None
    if after is not None:
        log(f"perplexity after:  {after:.3f}")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    import transformers

    report = Report(
        model=str(model_dir),
        method=method,
        sparsity=float(sparsity),
        pattern=pattern,
        sequential=sequential,
        aux_steps=steps,
        samples=len(calib_ids),
        seq_len=seq_len,
        layers=layers,
        sparsity_reached=reached,
        model_sparsity=model_sparsity,
        perplexity_before=before,
        perplexity_after=after,
        eval_windows=0 if eval_ids is None else len(eval_ids),
        seconds=time.perf_counter() - start,
        versions=dict(fls_kernels=fls.__version__, torch=torch.__version__, transformers=transformers.__version__),
    )
    (out / "fls_report.json").write_text(json.dumps(asdict(report), indent=2) + "\n")
    log(f"saved to {out} ({reached:.1%} of the {layers} pruned layers' weights are zero)")
    return report


__all__: Sequence[str] = (
    "METHODS",
    "RECIPES",
    "InputError",
    "Report",
    "load",
    "perplexity",
    "prune",
    "prune_model",
    "window_nll",
    "windows",
)
