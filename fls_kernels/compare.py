"""``python -m fls_kernels compare``: trust the fast path — every backend against the float64 reference on one
model's real layers, then a whole prune step per backend (mask agreement, weight error, time)."""

from __future__ import annotations

import copy
import importlib
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

import fls_reference as ref
from fls_kernels import backends, ops
from fls_kernels.pruning import FishLegPruner
from fls_kernels.tolerances import rel_error, tolerance


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


def _candidates(device: torch.device) -> list[str]:
    names = []
    for b in backends.backends():
        if b.load() is None and device.type in b.devices:
            names.append(b.name)
    return names


def _op_errors(pruner: FishLegPruner, name: str, device: torch.device) -> list[OpRow]:
    rows = []
    layers = []
    for i, view in enumerate(pruner.views):
        block = pruner.method.blocks[i]
        G_R, G_L = (g.detach() for g in block.grams())
        r, l = block.factor_diags()
        alive = pruner.masks.full(i)
        layers.append(dict(W=view.matrix(torch.float32), A=block.A.detach(), G_R=G_R, G_L=G_L, r=r, l=l, alive=alive))
    exact = [{k: v.double() if v.is_floating_point() else v for k, v in t.items()} for t in layers]

    def check(op: str, run: Callable[[dict], torch.Tensor], want: Callable[[dict], torch.Tensor], precision="fp32"):
        why = backends.get_backend(name).reason(op, device, torch.float32)
        if why is not None:
            rows.append(OpRow(name, op, None, 0.0, why))
            return
        worst = max(rel_error(run(t).double(), want(e)) for t, e in zip(layers, exact))
        rows.append(OpRow(name, op, worst, tolerance(torch.float32, precision)))

    check(
        "kron_qv",
        lambda t: ops.kron_qv(t["W"], t["A"], t["G_R"], t["G_L"], backend=name),
        lambda e: ref.kron_qv(e["W"], e["A"], e["G_R"], e["G_L"]),
    )
    check(
        "kron_diag",
        lambda t: ops.kron_diag(t["A"], t["r"], t["l"], backend=name),
        lambda e: ref.kron_diag(e["A"], e["r"], e["l"]),
    )
    check(
        "obs_scores",
        lambda t: ops.obs_scores(t["W"], t["A"], t["r"], t["l"], t["alive"], backend=name),
        lambda e: ref.obs_scores(e["W"], e["A"], e["r"], e["l"], e["alive"]),
    )

    def halves(t):  # prune the lower-scored half of each layer's alive weights
        s = ref.obs_scores(t["W"], t["A"], t["r"], t["l"], t["alive"])
        prune = s <= s[t["alive"]].median()
        return prune & t["alive"], t["alive"] & ~prune

    def update(t, reference):
        prune, keep = halves(t)
        W = t["W"].clone()
        if reference:
            return ref.surgeon_update_(W, t["A"], t["G_R"], t["G_L"], t["r"], t["l"], prune, keep)
        return ops.surgeon_update_(W, t["A"], t["G_R"], t["G_L"], t["r"], t["l"], prune, keep, backend=name)

    check("surgeon_update_", lambda t: update(t, False), lambda e: update(e, True))
    for op in ("select_smallest", "select_nm"):
        why = backends.get_backend(name).reason(op, device, torch.float32)
        if why is not None:
            rows.append(OpRow(name, op, None, 0.0, why))
            continue
        scores = [ref.obs_scores(t["W"], t["A"], t["r"], t["l"], t["alive"]) for t in layers]
        if op == "select_smallest":
            k = sum(int(s.isfinite().sum()) for s in scores) // 2
            got, want = ops.select_smallest(scores, k, backend=name), ref.select_smallest(scores, k)
        else:
            scores = [s[:, : s.shape[1] // 4 * 4] for s in scores if s.shape[1] >= 4]
            got = [ops.select_nm(s, 2, 4, backend=name) for s in scores]
            want = [ref.select_nm(s, 2, 4) for s in scores]
        differ = sum(int((g.cpu() != w.cpu()).sum()) for g, w in zip(got, want))
        rows.append(OpRow(name, op, differ / sum(w.numel() for w in want), 0.0))
    return rows


def run(
    model: nn.Module,
    batches: list,
    *,
    sparsity: float = 0.5,
    fit_steps: int = 100,
    only: list[str] | None = None,
) -> tuple[list[OpRow], list[StepRow]]:
    """Fit Q on the reference, then compare each backend's ops and one whole prune step with the reference's."""
    device = next(model.parameters()).device
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
