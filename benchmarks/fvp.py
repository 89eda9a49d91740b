"""Ways of computing the exact Fisher-vector product F v = (1/B) Σ_b J_bᵀ H_b J_b v of one calibration batch,
timed against a forward + backward of the same batch, each verified against the forward-over-reverse products.

Variants (:data:`VARIANTS`), all through :class:`~fls_kernels.curvature.ModelCurvature`:

    jvp                 forward-over-reverse: J v by ``torch.func.jvp``, H in closed form, Jᵀ(H J v) by one VJP
    double_vjp          reverse-over-reverse: J v = ∂⟨Jᵀu, v⟩/∂u (two VJPs), then the same H and VJP
    jvp, chunks B/2     the batch in two (four) forward/backward passes whose products are averaged
    jvp + torch.compile the jvp product under ``torch.compile`` (a failure to compile is the row's note)

A variant whose products differ from a fresh ``jvp`` run's by more than :data:`TOLERANCE` (max relative error over
the layers, float32) is marked and not timed. Timing: ``torch.utils.benchmark`` on the CPU (torch's thread count:
``OMP_NUM_THREADS=1`` on a machine whose cores other work shares), ``triton.testing.do_bench`` medians on CUDA,
with the peak memory of one more product.

``python -m benchmarks fvp [--device cpu|cuda] [--models digits mlp resnet18 minilm] [--seconds S]`` writes
``fvp-<device>.csv`` (stamped) and ``fvp-<device>.md``.
"""

from __future__ import annotations

import gc
import re
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor

from benchmarks import models
from benchmarks.runner import stamp, write_tables
from benchmarks.timer import Deadline, median_ms, peak_mib, reset_peak, sync
from fls_kernels.curvature import ModelCurvature, get_likelihood
from fls_kernels.data import model_output, split_batch
from fls_kernels.layers import LayerView, find_layers
from fls_kernels.tolerances import rel_error

#: Largest max relative error against the jvp products that a variant may show (float32).
TOLERANCE = 1e-4
YARDSTICK = "forward+backward"
REFERENCE = "jvp"

Product = Callable[[object, list[Tensor]], list[Tensor]]


@dataclass(frozen=True)
class Variant:
    """A way of computing F v: ``make(model, views)`` → a function (batch, vectors) → products.

    ``deferred``: run after every model's other variants (compilation may take long; a time-limited run then
    still measures the plain variants of every model first).
    """

    name: str
    make: Callable[[models.Model, list[LayerView]], Product]
    deferred: bool = False


@dataclass
class Row:
    model: str
    variant: str
    batch: int | None
    ms: float | None
    ratio: float | None  # ms over forward+backward's
    error: float | None  # max relative error against the jvp products
    peak_mib: float | None
    note: str = ""


def curvature(model: models.Model, views: list[LayerView], **options: object) -> ModelCurvature:
    """The curvature queries of ``model`` on ``views`` with ``options`` (``fvp_mode``, ``fvp_chunk``)."""
    return ModelCurvature(model.model, views, get_likelihood(model.likelihood), **options)


def _chunked(parts: int) -> Callable[[models.Model, list[LayerView]], Product]:
    def make(model: models.Model, views: list[LayerView]) -> Product:
        return curvature(model, views, fvp_mode="jvp", fvp_chunk=max(1, model.batch_size // parts)).fvp

    return make


def _compiled(model: models.Model, views: list[LayerView]) -> Product:
    torch._dynamo.reset()  # a fresh cache: the first call's time is this model's compilation
    return torch.compile(curvature(model, views, fvp_mode="jvp").fvp)


VARIANTS: list[Variant] = [
    Variant("jvp", lambda model, views: curvature(model, views, fvp_mode="jvp").fvp),
    Variant("double_vjp", lambda model, views: curvature(model, views, fvp_mode="double_vjp").fvp),
    Variant("jvp, chunks B/2", _chunked(2)),
    Variant("jvp, chunks B/4", _chunked(4)),
    Variant("jvp + torch.compile", _compiled, deferred=True),
]


def layer_views(model: models.Model) -> list[LayerView]:
    """The layers an FLS pruner of ``model`` prunes (its ``include=``)."""
    return find_layers(model.model, include=model.include)


def probe_vectors(views: list[LayerView], device: str, seed: int = 0) -> list[Tensor]:
    """One standard-normal [m, n] matrix per layer (float32, seeded)."""
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(v.m, v.n, generator=g).to(device) for v in views]


def forward_backward(model: models.Model, batch: object) -> Callable[[], object]:
    """The yardstick: forward of ``batch``, the likelihood's mean NLL at labels sampled once from the model, and
    the gradient of every parameter that reaches the output (``torch.autograd.grad``; MiniLM's pooler does not);
    the model in the mode it is in (the builders leave it in eval mode, as curvature passes use)."""
    likelihood = get_likelihood(model.likelihood)
    args, kwargs = split_batch(batch)
    params = [p for p in model.model.parameters() if p.requires_grad]
    with torch.no_grad():
        out = model_output(model.model(*args, **kwargs))
        target = likelihood.sample(out, torch.Generator(out.device).manual_seed(0))

    def call() -> object:
        out = model_output(model.model(*args, **kwargs))
        return torch.autograd.grad(likelihood.nll(out, target).sum() / out.shape[0], params, allow_unused=True)

    return call


def measure(call: Callable[[], object], device: str, min_run_time: float = 0.5) -> tuple[float, float | None]:
    """(median ms of ``call``, peak MiB of one call on CUDA else None): :func:`benchmarks.timer.median_ms` with all
    of torch's threads on the CPU."""
    ms = median_ms(call, device, min_run_time, num_threads=torch.get_num_threads())
    if device != "cuda":
        return ms, None
    reset_peak(device)
    call()
    return ms, peak_mib(device)


def failure(exc: BaseException) -> str:
    """One line naming why a call failed: the exception type, its first line and, for torch.compile, the op that
    stopped it."""
    text = str(exc).strip()
    first = text.splitlines()[0] if text else ""
    op = re.search(r"call_function <(?:built-in )?(?:function|method) ([\w.]+)", text)
    return f"{type(exc).__name__}: {first}" + (f" (at {op.group(1)})" if op else "")


def max_error(got: Sequence[Tensor], want: Sequence[Tensor]) -> float:
    """Max over layers of :func:`rel_error`; inf when a product is missing or not finite."""
    if len(got) != len(want):
        return float("inf")
    worst = 0.0
    for g, w in zip(got, want):
        if g.shape != w.shape or not bool(torch.isfinite(g).all()):
            return float("inf")
        worst = max(worst, rel_error(g, w))
    return worst


def run(
    specs: Sequence[str | models.Model],
    device: str,
    *,
    variants: Sequence[Variant] = VARIANTS,
    seconds: float | None = None,
    min_run_time: float = 0.5,
    log: Callable[[str], None] = print,
    checkpoint: Callable[[list[Row], dict[str, str]], object] | None = None,
) -> tuple[list[Row], dict[str, str]]:
    """Rows (per model: the yardstick, then every variant in order) and model name → description.

    ``specs``: model names (built by :func:`benchmarks.models.build`; one that cannot be built is a "not run" row
    with the reason) or built models. With ``seconds``, no measurement starts after that many seconds (the rest
    are listed as not timed). Variants are verified against a fresh ``jvp`` run before they are timed.
    ``checkpoint(rows, descriptions)`` is called after every row (e.g. to write the tables so far).
    """
    deadline = Deadline(seconds)
    names = [spec.name if isinstance(spec, models.Model) else spec for spec in specs]
    columns = [YARDSTICK] + [v.name for v in variants]
    rows: list[Row] = []
    descriptions: dict[str, str] = {}

    def emit(row: Row) -> None:
        rows.append(row)
        rows.sort(key=lambda r: (names.index(r.model), columns.index(r.variant) if r.variant in columns else -1))
        shown = (
            row.note
            if row.ms is None
            else f"{row.ms:10.3f} ms" + ("" if row.error is None else f"  err {row.error:.1e}")
        )
        log(f"{row.model:10} {row.variant:22} {shown}")
        if checkpoint is not None:
            checkpoint(rows, descriptions)

    built: list[models.Model] = []
    for spec in specs:
        try:
            built.append(spec if isinstance(spec, models.Model) else models.build(spec, device))
        except RuntimeError as exc:
            emit(Row(str(spec), "—", None, None, None, None, None, f"not run: {exc}"))
    state: dict[str, dict] = {}
    for deferred in (False, True):
        for model in built:
            s = state.setdefault(model.name, {})
            if not deferred:
                descriptions[model.name] = model.description
                s.update(views=layer_views(model), batch=model.batches[0], yardstick=None)
                s["vectors"] = probe_vectors(s["views"], device)
                try:
                    s["want"] = curvature(model, s["views"], fvp_mode="jvp").fvp(s["batch"], s["vectors"])
                except Exception as exc:  # noqa: BLE001 — without the reference nothing can be verified
                    s["want"] = None
                    emit(
                        Row(model.name, REFERENCE, model.batch_size, None, None, None, None, f"failed: {failure(exc)}")
                    )
                if deadline.spent():
                    emit(_not_timed(model, YARDSTICK, deadline))
                else:
                    try:
                        ms, peak = measure(forward_backward(model, s["batch"]), device, min_run_time)
                    except Exception as exc:  # noqa: BLE001 — the variants are still measured, without a ratio
                        emit(
                            Row(
                                model.name,
                                YARDSTICK,
                                model.batch_size,
                                None,
                                None,
                                None,
                                None,
                                f"failed: {failure(exc)}",
                            )
                        )
                    else:
                        s["yardstick"] = ms
                        emit(Row(model.name, YARDSTICK, model.batch_size, ms, 1.0, None, peak, "yardstick"))
            if s["want"] is None:
                continue
            for variant in variants:
                if variant.deferred == deferred:
                    emit(
                        _not_timed(model, variant.name, deadline)
                        if deadline.spent()
                        else _one(model, variant, s, device, min_run_time)
                    )
    state.clear()
    gc.collect()
    return rows, descriptions


def _not_timed(model: models.Model, variant: str, deadline: Deadline) -> Row:
    return Row(model.name, variant, model.batch_size, None, None, None, None, deadline.note())


def _one(model: models.Model, variant: Variant, s: dict, device: str, min_run_time: float) -> Row:
    """Verify then time one variant on the model's prepared batch and vectors (``s``)."""
    batch, vectors, want = s["batch"], s["vectors"], s["want"]
    try:
        product = variant.make(model, s["views"])
        sync(device)
        start = time.perf_counter()
        got = product(batch, vectors)
        sync(device)
        first = time.perf_counter() - start
    except Exception as exc:  # noqa: BLE001 — any failure to build or run a variant is the row's note
        return Row(model.name, variant.name, model.batch_size, None, None, None, None, f"failed: {failure(exc)}")
    error = max_error(got, want)
    if not error <= TOLERANCE:
        note = f"DISAGREES with jvp (max rel. error {error:.1e} > {TOLERANCE:.0e}): not timed"
        return Row(model.name, variant.name, model.batch_size, None, None, error, None, note)
    ms, peak = measure(lambda: product(batch, vectors), device, min_run_time)
    note = f"first call {first:.1f} s" if variant.deferred else ""
    ratio = ms / s["yardstick"] if s.get("yardstick") else None
    return Row(model.name, variant.name, model.batch_size, ms, ratio, error, peak, note)


def write(rows: list[Row], out_dir: str | Path, device: str, descriptions: dict[str, str]) -> tuple[Path, Path]:
    """``fvp-<device>.csv`` (one stamped row per measurement) and ``fvp-<device>.md`` (the table, with what each
    model is and how it was measured)."""
    meta = stamp(device)
    fields = ["model", "variant", "batch", "ms", "ratio", "error", "peak_mib", "note"]
    header = ["model", "variant", "batch", "ms", "x_forward_backward", "max_rel_error", "peak_mib", "note"]
    table = [[f"{v:.6g}" if isinstance(v, float) else v for v in (getattr(r, k) for k in fields)] for r in rows]
    threads = torch.get_num_threads()
    timer = (
        "triton.testing.do_bench medians"
        if device == "cuda"
        else f"torch.utils.benchmark medians, {threads} CPU thread{'s' if threads > 1 else ''}"
    )
    small = "" if device == "cuda" else " Small CPU-sized batches (the CUDA run uses the study-sized ones)."
    lines = [
        "Exact Fisher-vector products F v = (1/B) Σ_b J_bᵀ H_b J_b v through every prunable layer, one calibration "
        f"batch per model; ms per product ({timer}), × the forward + backward of the same batch (mean NLL at "
        f"sampled labels, gradients of every parameter), max relative error against the jvp products "
        f"(≤ {TOLERANCE:.0e} passes; a variant beyond it is marked and not timed).{small} Device "
        f"{meta['gpu_or_cpu']}, torch {meta['torch']}, commit {meta['commit']}, {meta['timestamp']}.",
        "",
        "Models: " + "; ".join(f"{name}: {text}" for name, text in descriptions.items()) + ".",
        "",
        "| model | variant | batch | ms | × fwd+bwd | max rel. err vs jvp | peak MiB | note |",
        "|---|---|---:|---:|---:|---:|---:|---|",
    ]
    for r in rows:
        cells = [
            r.model,
            r.variant,
            "—" if r.batch is None else str(r.batch),
            "—" if r.ms is None else f"{r.ms:.3f}",
            "—" if r.ratio is None else f"{r.ratio:.2f}",
            "—" if r.error is None else f"{r.error:.1e}",
            "—" if r.peak_mib is None else f"{r.peak_mib:.0f}",
            r.note.replace("|", "/"),
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return write_tables(out_dir, f"fvp-{device}", header, table, lines, meta)
