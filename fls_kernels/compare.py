"""``python -m fls_kernels compare``: trust the fast path — every backend against the float64 reference on one
model's real layers, then a whole prune step per backend (mask agreement, weight error, time)."""

from __future__ import annotations

import copy
import importlib
import importlib.util
import os
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

import fls_reference as ref
from fls_kernels import backends, ops
from fls_kernels.backends import table
from fls_kernels.backends.problems import bind
from fls_kernels.pruning import FishLegPruner, checks
from fls_kernels.tolerances import rel_error, tolerance

_TOL = tolerance(torch.float32, "fp32")


@dataclass
class OpRow:
    backend: str
    op: str
    error: float | None  # max relative error over layers (mask disagreement fraction for selections)
    tol: float
    note: str = ""

    @property
    def ok(self) -> bool:
        return self.error is not None and self.error <= self.tol


@dataclass
class StepRow:
    backend: str
    ms: float
    mask_agreement: float
    weight_error: float


def demo_model(device: str = "cpu") -> tuple[nn.Module, list]:
    """The digits CNN of the demo, trained for a few epochs, and its calibration batches."""
    from fls_kernels import demo

    data = demo.load_digits(0)
    torch.manual_seed(0)
    model = demo.train(demo.DigitsCNN(), data, epochs=5).to(device)
    batches = [(x.to(device), y.to(device)) for x, y in demo.batches(data.x_train, data.y_train, 128, 0)]
    return model, batches


def load_factory(spec: str) -> Callable[[str], tuple[nn.Module, list]]:
    """``package.module:function`` → a function device → (model, calibration batches)."""
    module, _, name = spec.partition(":")
    if not name:
        raise ValueError(f"model: expected 'package.module:function', got {spec!r}")
    return getattr(importlib.import_module(module), name)


_BUILD = "FLS_BUILD_EXT=1 pip install --no-build-isolation -e ."


def no_cuda() -> str | None:
    """Why torch cannot use a CUDA device here (a CPU-only build, or no device visible), or None when it can."""
    if torch.version.cuda is None:
        return f"torch {torch.__version__} is a CPU-only build"
    if not torch.cuda.is_available():
        visible = os.environ.get("CUDA_VISIBLE_DEVICES")
        hint = f" (CUDA_VISIBLE_DEVICES={visible!r})" if visible is not None else ""
        return f"torch {torch.__version__} sees no CUDA device{hint}"
    return None


def _extension_problem() -> tuple[str, str] | None:
    """What is wrong with the compiled extension ``fls_kernels._C``, and the fix; None when it loads."""
    try:
        importlib.import_module("fls_kernels._C")
    except ModuleNotFoundError as exc:
        if exc.name != "fls_kernels._C":
            return f"fls_kernels._C needs the missing module {exc.name!r}", f"pip install {exc.name}"
        return "the extension fls_kernels._C is not built", f"build it: `{_BUILD}` (needs a C++20 compiler)"
    except Exception as exc:  # noqa: BLE001 - e.g. an undefined symbol: built against another torch
        return (
            f"the extension fls_kernels._C does not load ({type(exc).__name__}: {exc})",
            f"rebuild it against the torch {torch.__version__} in use: `{_BUILD}`",
        )
    return None


def _diagnose_triton() -> tuple[str, str] | None:
    if importlib.util.find_spec("triton") is None:
        return (
            "the module `triton` is not installed",
            "`pip install triton`, then run on a CUDA device (or set TRITON_INTERPRET=1 to interpret on the CPU)",
        )
    try:
        import triton
    except Exception as exc:  # noqa: BLE001 - a broken or mismatched install
        return (
            f"`import triton` fails ({type(exc).__name__}: {exc})",
            f"reinstall the triton version that torch {torch.__version__} pins (`pip install --force-reinstall`)",
        )
    cuda = no_cuda()
    if cuda is not None and os.environ.get("TRITON_INTERPRET", "0") != "1":
        return (
            f"triton {triton.__version__} imports, but {cuda} and TRITON_INTERPRET is not 1",
            "run on a machine with a CUDA GPU and a CUDA build of torch, or start Python with TRITON_INTERPRET=1 "
            "to run the kernels through Triton's CPU interpreter (slow; used only on explicit request)",
        )
    return None


def _diagnose_native(name: str) -> tuple[str, str] | None:
    if name == "cuda":
        cuda = no_cuda()
        if cuda is not None and torch.version.cuda is None:
            return (
                cuda,
                "on a machine with an NVIDIA GPU, use a CUDA build of torch and build the extension there with "
                f"nvcc on PATH: `{_BUILD}`",
            )
        if cuda is not None:
            return cuda, "run on a machine with an NVIDIA GPU (check `nvidia-smi` and CUDA_VISIBLE_DEVICES)"
    problem = _extension_problem()
    if problem is not None:
        return problem
    if name == "cuda" and "without CUDA kernels" in (backends.get_backend(name).load() or ""):
        return (
            "the extension fls_kernels._C was built without CUDA kernels",
            f"rebuild it on this machine with nvcc on PATH: `{_BUILD}`",
        )
    return None


def diagnose(backend: backends.Backend) -> tuple[str, str] | None:
    """Why ``backend`` cannot load on this machine — what is actually missing (a module not installed, no CUDA
    device, the extension not built, ...) — and the fix that would help; None when it loads."""
    error = backend.load()
    if error is None:
        return None
    found = None
    if backend.name == "triton":
        found = _diagnose_triton()
    elif backend.name in ("cpu", "cuda"):
        found = _diagnose_native(backend.name)
    return found or (error, backend.fix or "see the error above")


def backend_problem(name: str, device: torch.device) -> str | None:
    """Why the backend called ``name`` cannot be compared on ``device`` (unknown, not available here with the
    fix, or made for other devices), or None when it can."""
    try:
        backend = backends.get_backend(name)
    except ValueError:
        return f"unknown backend {name!r} (known: {', '.join(b.name for b in backends.backends())})"
    found = diagnose(backend)
    if found is not None:
        return f"backend {name!r} is not available here: {found[0]}; fix: {found[1]}"
    if device.type not in backend.devices:
        return f"backend {name!r} does not run on {device.type} (it runs on {', '.join(backend.devices)})"
    return None


def _candidates(device: torch.device) -> list[str]:
    return [b.name for b in backends.backends() if backend_problem(b.name, device) is None]


def _layer_problems(pruner: FishLegPruner) -> tuple[list[dict], list[dict]]:
    """Each layer's problem (float32) from the fitted Q and the model's weights, and its float64 copy: the
    selection scores are the OBS scores (taken once, so both copies select from equal values) and ``prune`` the
    lower-scored half of the alive weights."""
    layers, exact = [], []
    for i, view in enumerate(pruner.views):
        block = pruner.method.blocks[i]
        G_R, G_L = (g.detach() for g in block.grams())
        r, l = block.factor_diags()
        t = dict(W=view.matrix(torch.float32), A=block.A.detach(), G_R=G_R, G_L=G_L, r=r, l=l)
        t["alive"] = alive = pruner.masks.full(i)
        scores = ref.obs_scores(t["W"], t["A"], t["r"], t["l"], alive)
        prune = (scores <= scores[alive].median()) & alive
        t.update(scores=scores, prune=prune, keep=alive & ~prune)
        layers.append(t)
        exact.append({k: v.double() if v.is_floating_point() else v for k, v in t.items()})
    return layers, exact


def _op_errors(pruner: FishLegPruner, name: str, device: torch.device) -> list[OpRow]:
    """Every op of the table on backend ``name`` against the reference in float64, its arguments bound from the
    model's layers: a per-layer op on each layer (its worst error), a grouped op on all of them at once."""
    layers, exact = _layer_problems(pruner)
    rows = []
    for op in table.TABLE:
        why = backends.get_backend(name).reason(op.name, device, torch.float32)
        if why is not None:
            rows.append(OpRow(name, op.name, None, 0.0, why))
            continue
        pairs = [(layers, exact)] if op.grouped else list(zip(layers, exact))
        worst, differ, total = 0.0, 0, 0
        for problem, reference in pairs:
            got = getattr(ops, op.name)(*bind(op, problem), backend=name)
            want = getattr(ref, op.name)(*bind(op, reference))
            for g, w in zip(*(o if isinstance(o, list) else [o] for o in (got, want))):
                if op.masks:
                    differ, total = differ + int((g.cpu() != w.cpu()).sum()), total + w.numel()
                else:
                    worst = max(worst, rel_error(g.double(), w))
        rows.append(OpRow(name, op.name, differ / total if op.masks else worst, 0.0 if op.masks else _TOL))
    return rows


def run(
    model: nn.Module,
    batches: list,
    *,
    sparsity: float = 0.5,
    fit_steps: int = 100,
    only: list[str] | None = None,
) -> tuple[list[OpRow], list[StepRow]]:
    """Fit Q on the reference, then compare each backend's ops and one whole prune step with the reference's.

    Args:
        only: compare just these backends (and the reference); None: every backend that can run on the model's
            device.

    Raises:
        ValueError / TypeError: a bad ``sparsity`` or ``fit_steps``, or a backend of ``only`` that is unknown or
            cannot run here (the message says why and the fix) — before anything is fitted.
    """
    device = next(model.parameters()).device
    checks.sparsity("sparsity", sparsity)
    checks.integer("fit_steps", fit_steps)
    for name in only or ():
        problem = backend_problem(name, device)
        if problem is not None:
            raise ValueError(f"only: {problem}")
    pruner = FishLegPruner(model, refine_steps=0, backend="reference")
    pruner.fit(batches, steps=fit_steps)
    names = [n for n in _candidates(device) if only is None or n in only]
    op_rows = [row for name in names if name != "reference" for row in _op_errors(pruner, name, device)]
    state, weights = pruner.state_dict(), copy.deepcopy(model.state_dict())
    results = {}
    for name in names:
        pruner.backend = name
        for _ in range(2):  # the first step warms up (kernel compilation, autotuning, thread pools)
            pruner.load_state_dict(state)
            model.load_state_dict(weights)
            start = time.perf_counter()
            pruner.prune(sparsity)
            if device.type == "cuda":
                torch.cuda.synchronize()
        ms = 1e3 * (time.perf_counter() - start)
        results[name] = (ms, {k: m.clone() for k, m in pruner.masks.items()}, [v.matrix() for v in pruner.views])
    _, ref_masks, ref_mats = results["reference"]
    steps = []
    for name, (ms, masks, mats) in results.items():
        agree = sum(int((masks[k] == ref_masks[k]).sum()) for k in masks) / sum(m.numel() for m in masks.values())
        err = max(rel_error(a, b) for a, b in zip(mats, ref_mats))
        steps.append(StepRow(name, ms, agree, err))
    pruner.load_state_dict(state)
    model.load_state_dict(weights)
    return op_rows, steps


def format_report(op_rows: list[OpRow], steps: list[StepRow]) -> str:
    lines = [
        "| backend | op | max rel. error (selections: fraction differing) | tolerance | ok |",
        "|---|---|---:|---:|---|",
    ]
    for r in op_rows:
        if r.error is None:
            lines.append(f"| {r.backend} | {r.op} | — | — | skipped: {r.note} |")
        else:
            lines.append(f"| {r.backend} | {r.op} | {r.error:.2e} | {r.tol:.0e} | {'yes' if r.ok else 'NO'} |")
    lines += [
        "",
        "| backend | prune step ms | masks equal to reference | max rel. weight error |",
        "|---|---:|---:|---:|",
    ]
    for s in steps:
        lines.append(f"| {s.backend} | {s.ms:.2f} | {100 * s.mask_agreement:.3f}% | {s.weight_error:.2e} |")
    return "\n".join(lines)
