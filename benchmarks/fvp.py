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

import functools
import gc
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor

from benchmarks import harness, models
from benchmarks.harness import Row, VerifyError, failure, stamp
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


def _row(model: str, variant: str, batch: int | None, note: str) -> Row:
    """A row of the table that was not run: case (model, batch), provider = the variant, and ``note``."""
    return _columns(Row(dict(model=model, batch=batch), variant, note=note))


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
        rows.sort(key=lambda r: (names.index(r.model), columns.index(r.provider) if r.provider in columns else -1))
        shown = (
            row.note
            if row.ms is None
            else f"{row.ms:10.3f} ms" + ("" if row.error is None else f"  err {row.error:.1e}")
        )
        log(f"{row.model:10} {row.provider:22} {shown}")
        if checkpoint is not None:
            checkpoint(rows, descriptions)

    built: list[models.Model] = []
    for spec in specs:
        try:
            built.append(spec if isinstance(spec, models.Model) else models.build(spec, device))
        except RuntimeError as exc:
            emit(_row(str(spec), "—", None, f"not run: {exc}"))
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
                    emit(_row(model.name, REFERENCE, model.batch_size, f"failed: {failure(exc)}"))
                row = harness.measure(
                    dict(model=model.name, batch=model.batch_size),
                    YARDSTICK,
                    functools.partial(_timed, forward_backward(model, s["batch"]), device, min_run_time, None),
                    deadline=deadline,
                    note="yardstick",
                )
                if row.ms is not None:
                    s["yardstick"], row.values["ratio"] = row.ms, 1.0
                emit(_columns(row))
            if s["want"] is None:
                continue
            for variant in variants:
                if variant.deferred == deferred:
                    emit(_one(model, variant, s, device, min_run_time, deadline))
    state.clear()
    gc.collect()
    return rows, descriptions


def _timed(call: Callable[[], object], device: str, min_run_time: float, yardstick: float | None) -> tuple:
    """(ms, columns) of ``call``: its ratio to the ``yardstick``'s ms (None without one) and its peak MiB."""
    ms, peak = measure(call, device, min_run_time)
    return ms, dict(ratio=ms / yardstick if yardstick else None, peak_mib=peak)


def _columns(row: Row) -> Row:
    """``row`` with the table's further columns, ratio (ms over forward+backward's) and peak_mib, None where it
    was not timed."""
    row.values = dict(ratio=None, peak_mib=None) | row.values
    return row


def _one(model: models.Model, variant: Variant, s: dict, device: str, min_run_time: float, deadline: Deadline) -> Row:
    """Verify then time one variant on the model's prepared batch and vectors (``s``) through the harness."""
    batch, vectors, want = s["batch"], s["vectors"], s["want"]
    built: dict = {}

    def verify() -> float:
        built["product"] = product = variant.make(model, s["views"])
        sync(device)
        start = time.perf_counter()
        got = product(batch, vectors)
        sync(device)
        built["first"] = time.perf_counter() - start
        error = max_error(got, want)
        if not error <= TOLERANCE:
            raise VerifyError(f"jvp's products, max rel. error {error:.1e} > {TOLERANCE:.0e}", error)
        return error

    def timed() -> tuple:
        return _timed(lambda: built["product"](batch, vectors), device, min_run_time, s.get("yardstick"))

    case = dict(model=model.name, batch=model.batch_size)
    row = harness.measure(case, variant.name, timed, verify=verify, deadline=deadline)
    if row.ms is not None and variant.deferred:
        row.note = f"first call {built['first']:.1f} s"
    return _columns(row)


def write(rows: list[Row], out_dir: str | Path, device: str, descriptions: dict[str, str]) -> tuple[Path, Path]:
    """``fvp-<device>.csv`` (one stamped row per measurement) and ``fvp-<device>.md`` (the table, with what each
    model is and how it was measured)."""
    meta = stamp(device)
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
            r.provider,
            "—" if r.batch is None else str(r.batch),
            "—" if r.ms is None else f"{r.ms:.3f}",
            "—" if r.ratio is None else f"{r.ratio:.2f}",
            "—" if r.error is None else f"{r.error:.1e}",
            "—" if r.peak_mib is None else f"{r.peak_mib:.0f}",
            r.note.replace("|", "/"),
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return harness.write(rows, out_dir, f"fvp-{device}", lines, meta, provider="variant", error="max_rel_error")
