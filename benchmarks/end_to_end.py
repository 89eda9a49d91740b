"""Whole-model one-shot FLS prune (fit + K sub-steps) per backend, with the time split into statistics, FVP,
Q products, scoring, selection and updates (:mod:`fls_kernels.timing`); and the split of one aux step against
its parts timed alone and against a forward + backward of the same batch.

Per model (:mod:`benchmarks.models`) and backend:

- aux step: a fitted pruner's mean step over ``aux_steps`` steps — total, ``fvp``, ``q_products`` and the rest
  (Adam on λ, probes' bookkeeping) — beside the Fisher-vector product alone (``ModelCurvature.fvp``) and the Q
  products alone (every layer's v = Q u with its graph to λ, the preconditioning Q r and the backward into λ, as
  the fitter does), each a median of its own. Targets: aux step ≤ 1.3 × (FVP + Q), FVP ≤ 2.5 × forward+backward.
- one-shot prune: the wall time of ``fit(steps=fit_steps)`` + ``prune(sparsity, substeps)`` on a fresh copy.
- peak CUDA memory (``torch.cuda.max_memory_allocated``, reset before each measurement); "—" on the CPU.

``python -m benchmarks e2e [--device cpu|cuda] [--model digits|mlp|resnet18|minilm] [--backends ...]``
"""

from __future__ import annotations

import copy
import dataclasses
import functools
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

import fls_kernels as fls
from benchmarks import fvp, harness, models
from benchmarks.harness import Row, stamp
from benchmarks.timer import Deadline, peak_mib, reset_peak, sync
from fls_kernels import timing
from fls_kernels.curvature import AuxFitter

SECTIONS = ("statistics", "fvp", "q_products", "scoring", "selection", "update")
#: Column of the CSV → (markdown header) of the aux-step table, in order.
AUX_COLUMNS = {
    "step_ms": "aux step",
    "fvp_ms": "fvp",
    "q_ms": "q_products",
    "other_ms": "other",
    "fvp_alone_ms": "FVP alone",
    "q_alone_ms": "Q alone",
    "step_over_parts": "step / (FVP + Q)",
    "fwd_bwd_ms": "fwd+bwd",
    "fvp_over_fwd_bwd": "FVP / fwd+bwd",
    "peak_step_mib": "peak MiB step",
    "peak_fwd_bwd_mib": "peak MiB fwd+bwd",
}
HEAVY = ("resnet18", "minilm")  # on the CPU their Q products take seconds per aux step (ResNet-18: ~15 s)


@dataclass(frozen=True)
class Settings:
    """What is run: ``fit_steps`` aux steps then a prune to ``sparsity`` in ``substeps`` sub-steps (with
    :attr:`refine_steps` before each), and ``aux_steps`` steps timed for the per-step split."""

    fit_steps: int
    aux_steps: int
    substeps: int
    sparsity: float = 0.8
    aux_compile: str | None = None  # FishLegPruner(aux_compile=): the λ side of each aux step under torch.compile

    @classmethod
    def defaults(cls, model: str, device: str) -> Settings:
        """The study-sized run on cuda (2000 fit steps, 100 timed, 16 sub-steps); on the CPU 200 fit steps, 20
        timed and 4 sub-steps, or 2, 2 and 2 for ResNet-18 and MiniLM."""
        if device == "cuda":
            return cls(2000, 100, 16)
        return cls(2, 2, 2) if model in HEAVY else cls(200, 20, 4)

    def override(self, **values: object) -> Settings:
        """These settings with the values that are not None replaced."""
        return dataclasses.replace(self, **{k: v for k, v in values.items() if v is not None})

    @property
    def refine_steps(self) -> int:
        """Aux steps before each sub-step after the first: a tenth of the fit, at least one."""
        return max(1, self.fit_steps // 10)

    def describe(self) -> str:
        return (
            f"fit {self.fit_steps} aux steps ({self.refine_steps} before each later sub-step), prune to "
            f"{self.sparsity:.0%} in {self.substeps} sub-steps; per-step split over {self.aux_steps} aux steps"
            + (f"; λ side compiled ({self.aux_compile!r})" if self.aux_compile else "")
        )


@dataclass
class Result:
    """The measurements of one model: one harness row per backend in each table (``ms`` None: not run, ``note``
    says why). A prune row's ms is the whole run's (its columns: ``total`` seconds and the sections); an aux row's
    is the mean step's (its columns: :data:`AUX_COLUMNS`)."""

    model: models.Model
    settings: Settings
    prune: list[Row]
    aux: list[Row]


def q_products(fitter: AuxFitter) -> Callable[[], None]:
    """One aux step's Q work as ``fitter`` does it (:meth:`AuxFitter.q_work`: the one-call probes, every layer's
    v = Q u with its graph to λ — grouped, or through the factors where that is cheaper —, a preconditioned
    residual Q r, then the backward of Σ ⟨Q r, v⟩ into λ)."""
    return fitter.q_work


def pruner(model: models.Model, backend: str, settings: Settings) -> fls.FishLegPruner:
    """A FishLegPruner of a fresh copy of ``model`` on ``backend`` with the model's options."""
    options = {**model.options, **({"aux_compile": settings.aux_compile} if settings.aux_compile else {})}
    net = copy.deepcopy(model.model)
    return fls.FishLegPruner(net, model.likelihood, backend=backend, refine_steps=settings.refine_steps, **options)


def aux_split(model: models.Model, backend: str, device: str, settings: Settings) -> dict:
    """The mean aux step of a fitted pruner (after its first steps, untimed) split by section, and the Q products
    of its layers timed alone; milliseconds."""
    p = pruner(model, backend, settings)
    # statistics, λ's start and a first step (three when compiled: CUDA graphs record on later calls) untimed
    p.fit(model.batches, steps=3 if settings.aux_compile else 1)
    reset_peak(device)
    start = time.perf_counter()
    with timing.record() as times:
        p.fit(model.batches, steps=settings.aux_steps)
    sync(device)
    total = (time.perf_counter() - start) * 1e3 / settings.aux_steps
    peak = peak_mib(device)
    step_fvp = times.get("fvp", 0.0) * 1e3 / settings.aux_steps
    step_q = times.get("q_products", 0.0) * 1e3 / settings.aux_steps
    q_ms, _ = fvp.measure(q_products(p.method.fitter), device)
    del p
    return dict(
        step_ms=total, fvp_ms=step_fvp, q_ms=step_q, other_ms=total - step_fvp - step_q, q_alone_ms=q_ms,
        peak_step_mib=peak,
    )  # fmt: skip


def whole_prune(model: models.Model, backend: str, device: str, settings: Settings) -> dict:
    """Seconds of fit + prune on a fresh copy, by :mod:`fls_kernels.timing` section (the rest: ``other``)."""
    p = pruner(model, backend, settings)
    reset_peak(device)
    start = time.perf_counter()
    with timing.record() as times:
        p.fit(model.batches, steps=settings.fit_steps)
        p.prune(settings.sparsity, substeps=settings.substeps)
    sync(device)
    total = time.perf_counter() - start
    return dict(total=total, other=total - sum(times.values()), peak_mib=peak_mib(device), **times)


def unavailable(backend: str, device: str) -> str | None:
    """Why ``backend`` cannot run on ``device`` here (unknown, not loadable, another device), or None."""
    try:
        found = fls.backends.get_backend(backend)
    except ValueError as exc:
        return str(exc)
    why = found.load()
    if why is None and device not in found.devices:
        return f"does not run on {device}"
    return why


def run(
    model: models.Model,
    device: str,
    backends: list[str],
    settings: Settings,
    *,
    seconds: float | None = None,
    log: Callable[[str], None] = print,
    checkpoint: Callable[[Result], object] | None = None,
) -> Result:
    """The yardstick and the FVP alone once per model, then per backend the aux-step split and the one-shot prune.
    With ``seconds``, no backend starts after that many seconds (its rows say so); ``checkpoint(result)`` is
    called after every backend (e.g. to write the tables so far)."""
    deadline = Deadline(seconds)
    views = fvp.layer_views(model)
    batch, vectors = model.batches[0], fvp.probe_vectors(views, device)
    curvature = fvp.curvature(model, views)
    fvp_ms, _ = fvp.measure(lambda: curvature.fvp(batch, vectors), device)
    fwd_bwd_ms, fwd_bwd_peak = fvp.measure(fvp.forward_backward(model, batch), device)
    log(f"{model.name}: FVP {fvp_ms:.3f} ms, forward+backward {fwd_bwd_ms:.3f} ms ({fvp_ms / fwd_bwd_ms:.2f}×)")
    shared = dict(fvp_alone_ms=fvp_ms, fwd_bwd_ms=fwd_bwd_ms, fvp_over_fwd_bwd=fvp_ms / fwd_bwd_ms)
    result = Result(model, settings, [], [])

    def aux(name: str) -> tuple[float, dict]:
        split = {**aux_split(model, name, device, settings), **shared, "peak_fwd_bwd_mib": fwd_bwd_peak}
        split["step_over_parts"] = split["step_ms"] / (split["fvp_alone_ms"] + split["q_alone_ms"])
        log(
            f"{name:10} aux step {split['step_ms']:.2f} ms (fvp {split['fvp_ms']:.2f}, q {split['q_ms']:.2f}); FVP "
            f"alone {fvp_ms:.2f}, Q alone {split['q_alone_ms']:.2f}: {split['step_over_parts']:.2f}×"
        )
        return split["step_ms"], split

    def prune(name: str) -> tuple[float, dict]:
        sections = whole_prune(model, name, device, settings)
        log(f"{name:10} {sections['total']:8.2f} s  " + "  ".join(f"{k} {sections.get(k, 0):.2f}" for k in SECTIONS))
        return 1e3 * sections["total"], sections

    for name in backends:
        why = unavailable(name, device)
        for table, rows, work in (("aux", result.aux, aux), ("prune", result.prune, prune)):
            case = dict(table=table, model=model.name)
            rows.append(harness.measure(case, name, functools.partial(work, name), unavailable=why, deadline=deadline))
        if checkpoint is not None:
            checkpoint(result)
    return result


def _cell(value: object, fmt: str = ".2f") -> str:
    if value is None or value == "":
        return "—"
    return format(value, fmt) if isinstance(value, float) else str(value)


def write(result: Result, out_dir: str | Path, device: str) -> tuple[Path, Path]:
    """``e2e-<model>-<device>.csv`` (both tables' rows, a ``table`` column telling them apart, stamped) and
    ``e2e-<model>-<device>.md`` (the one-shot prune table, then the aux-step table)."""
    meta = stamp(device)
    name = result.model.name
    s, threads = result.settings, torch.get_num_threads()
    lines = [
        f"Model {result.model.description}; {s.describe()}. Device {meta['gpu_or_cpu']}"
        + ("" if device == "cuda" else f" ({threads} CPU thread{'s' if threads > 1 else ''})")
        + f", torch {meta['torch']}, commit {meta['commit']}, {meta['timestamp']}.",
        "",
        "One-shot FLS prune, fit included: seconds (share of the total); peak MiB on CUDA.",
        "",
        "| backend | total | " + " | ".join(SECTIONS) + " | other | peak MiB |",
        "|---|---:|" + "---:|" * (len(SECTIONS) + 2),
    ]
    for r in result.prune:
        if r.ms is None:
            lines.append(f"| {r.provider} | not run: {r.note} |" + " |" * (len(SECTIONS) + 2))
            continue
        total = r.values["total"]
        cells = [
            f"{r.values.get(k, 0.0):.2f} ({100 * r.values.get(k, 0.0) / total:.0f}%)" for k in (*SECTIONS, "other")
        ]
        cells.append(_cell(r.values["peak_mib"], ".0f"))
        lines.append(f"| {r.provider} | {total:.2f} | " + " | ".join(cells) + " |")
    lines += [
        "",
        f"One aux step, ms: the mean of {s.aux_steps} steps of a fitted pruner and its sections; the FVP and the Q "
        "products each timed alone (medians); forward + backward of the same batch as the yardstick. Targets: "
        "step ≤ 1.3 × (FVP + Q), FVP ≤ 2.5 × fwd+bwd.",
        "",
        "| backend | " + " | ".join(AUX_COLUMNS.values()) + " |",
        "|---|" + "---:|" * len(AUX_COLUMNS),
    ]
    for r in result.aux:
        if r.ms is None:
            lines.append(f"| {r.provider} | not run: {r.note} |" + " |" * (len(AUX_COLUMNS) - 1))
            continue
        cells = [_cell(r.values.get(k), ".0f" if k.startswith("peak") else ".2f") for k in AUX_COLUMNS]
        lines.append(f"| {r.provider} | " + " | ".join(cells) + " |")
    rows = [*result.prune, *result.aux]
    return harness.write(rows, out_dir, f"e2e-{name}-{device}", lines, meta, provider="backend")
