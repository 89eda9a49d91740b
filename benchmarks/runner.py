"""The kernel benchmark (``python -m benchmarks kernels``): every op × case × provider of the registry, verified
against the float64 reference and then timed through the harness (:func:`benchmarks.harness.measure`); the table
with speed-ups, the two GEMMs' time and the roofline at ceilings measured in the same run; a comparison with
another git ref."""

from __future__ import annotations

import csv
import functools
import subprocess
from pathlib import Path

import torch

from benchmarks import harness, registry
from benchmarks.harness import Row, VerifyError, stamp
from benchmarks.peaks import Peaks
from benchmarks.timer import Deadline, median_ms
from fls_kernels.testing import poison_outputs, rel_error, tolerance


def _outputs(out) -> list[torch.Tensor]:
    if isinstance(out, (list, tuple)):
        return [t for item in out for t in _outputs(item)]
    return [out]


def _float64(value):
    if isinstance(value, list):
        return [_float64(v) for v in value]
    return value.double() if isinstance(value, torch.Tensor) and value.is_floating_point() else value


def verify(case: registry.Case, provider: str, device: str) -> float:
    """Max relative error of ``provider`` against the float64 reference (computed on ``device``, which on a GPU
    takes milliseconds where the CPU takes minutes for LLM layers); VerifyError beyond tolerance. The provider
    runs with NaN-poisoned outputs (:func:`fls_kernels.testing.poison_outputs`), so entries it skips fail."""
    grouped = case.layers is not None
    inputs = registry.make_inputs(case, device)
    exact = {k: _float64(v) for k, v in registry.make_inputs(case, device).items()}
    with poison_outputs():
        got = _outputs(registry.provider_call(case.op, provider, grouped)(inputs, case.precision))
    want = [w.cpu() for w in _outputs(registry.provider_call(case.op, "reference", grouped)(exact, "fp32"))]
    worst = 0.0
    for g, w in zip(got, want):
        g = g.cpu()
        if g.dtype == torch.bool:
            if not torch.equal(g, w):
                raise VerifyError(f"{case.op}/{provider}: {int((g != w).sum())} mask entries differ")
            continue
        if torch.isnan(g).any() or not torch.equal(torch.isinf(g), torch.isinf(w)):
            raise VerifyError(f"{case.op}/{provider}: NaN or misplaced inf")
        worst = max(worst, rel_error(g, w))
    tol = tolerance(torch.float32, case.precision)
    if worst > tol:
        raise VerifyError(f"{case.op}/{provider} on {case.shape}: relative error {worst:.2e} > {tol:.0e}", worst)
    return worst


def time_ms(case: registry.Case, provider: str, device: str) -> float:
    """Median milliseconds of one call (triton.testing.do_bench on CUDA, torch.utils.benchmark on CPU).

    In-place updates are not undone between calls (a restore would add a copy of every W to the timing):
    after the first call the pruned weights are zero, so Z = 0 and W stays put, while the kernels do the same
    work as on fresh weights.
    """
    inputs = registry.make_inputs(case, device)
    fn = registry.provider_call(case.op, provider, case.layers is not None)

    def call():
        return fn(inputs, case.precision)

    return median_ms(call, device, num_threads=1)


def run(
    ops, providers, shapes, device: str, precision: str = "fp32", groups=(), seconds: float | None = None
) -> list[Row]:
    """Verify then time every op × case × provider; ``groups`` names entries of ``registry.GROUPS``. With
    ``seconds``, cases not started by then are listed as not timed (so a time-limited run still tabulates); a
    provider that disagrees with the reference is listed, not timed."""
    rows = []
    deadline = Deadline(seconds)
    for op in ops:
        for case in registry.cases(op, shapes, list(groups), precision):
            for provider in providers:
                yardstick = provider in registry.YARDSTICKS
                row = harness.measure(
                    dict(op=op, shape=case.shape, precision=precision, device=device),
                    provider,
                    functools.partial(time_ms, case, provider, device),
                    verify=None if yardstick else functools.partial(verify, case, provider, device),
                    unavailable=registry.unavailable(op, provider, device),
                    deadline=deadline,
                    note="yardstick" if yardstick else "",
                )
                rows.append(row)
                if row.ms is not None:
                    shown = "yardstick" if row.error is None else f"err {row.error:.1e}"
                    print(f"{op:24} {case.shape:24} {provider:18} {row.ms:9.3f} ms  {shown}", flush=True)
                elif harness.disagrees(row):
                    print(f"{op:24} {case.shape:24} {provider:18} {row.note}", flush=True)
    return rows


def _case(row: Row) -> registry.Case:
    if row.shape in registry.GROUPS:
        return registry.Case.group(row.op, row.shape, row.precision)
    m, n = next((m, n) for s, m, n in registry.SHAPES if s == row.shape)
    return registry.Case(row.op, row.shape, m, n, row.precision)


def roofline_ms(case: registry.Case, peaks: Peaks | None) -> float | None:
    """The case's bound at the ceilings measured in this run (None without them)."""
    return None if peaks is None else peaks.roofline_ms(case.flops(), case.bytes(), case.precision)


def stem(device: str, precision: str = "fp32") -> str:
    """File stem of a kernels run: ``kernels-<device>`` for fp32, ``kernels-<device>-<precision>`` otherwise."""
    return f"kernels-{device}" + ("" if precision == "fp32" else f"-{precision}")


def write(
    rows: list[Row], out_dir: str | Path, device: str, precision: str = "fp32", peaks: Peaks | None = None
) -> tuple[Path, Path]:
    """CSV (one row per measurement, stamped) and a markdown table with speed-ups, the time over the two GEMMs'
    (where the ``gemms`` yardstick ran) and % of the roofline at ``peaks`` (measured in the same run), named by
    :func:`stem`."""
    meta = stamp(device)
    name = stem(device, precision)
    lines = [
        f"Device {meta['gpu_or_cpu']}, torch {meta['torch']}, triton {meta['triton']}, commit {meta['commit']}, "
        f"{meta['timestamp']}" + (f"; {peaks.describe()}." if peaks is not None else "."),
        "",
        "| op | shape | provider | ms | × eager ref | × compiled ref | time / 2 GEMMs | % roofline |",
        "|---|---|---|---:|---:|---:|---:|---:|",
    ]
    base = {(r.op, r.shape, r.provider): r.ms for r in rows}
    for r in rows:
        if r.ms is None:
            continue
        eager, compiled = base.get((r.op, r.shape, "reference")), base.get((r.op, r.shape, "reference+compile"))
        gemms, roof = base.get((r.op, r.shape, "gemms")), roofline_ms(_case(r), peaks)
        cells = [
            f"{eager / r.ms:.2f}" if eager else "—",
            f"{compiled / r.ms:.2f}" if compiled else "—",
            f"{r.ms / gemms:.2f}" if gemms else "—",
            f"{100 * roof / r.ms:.0f}%" if roof else "—",
        ]
        lines.append(f"| {r.op} | {r.shape} | {r.provider} | {r.ms:.3f} | " + " | ".join(cells) + " |")
    skipped = sorted({f"{r.provider}: {r.note}" for r in rows if r.ms is None})
    if skipped:
        lines += ["", "Not run: " + "; ".join(skipped)]
    csv_path, md_path = harness.write(rows, out_dir, name, lines, meta, error="rel_error")
    plot(rows, Path(out_dir) / f"{name}.png", f"{meta['gpu_or_cpu']}, commit {meta['commit']}")
    return csv_path, md_path


def plot(rows: list[Row], path: Path, title: str) -> None:
    """One panel per op: milliseconds per shape (log scale), one bar per provider."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    timed = [r for r in rows if r.ms is not None]
    ops_ = list(dict.fromkeys(r.op for r in timed))
    if not ops_:
        return
    fig, axes = plt.subplots(len(ops_), 1, figsize=(9, 2.8 * len(ops_)), squeeze=False)
    for ax, op in zip(axes[:, 0], ops_):
        shapes = list(dict.fromkeys(r.shape for r in timed if r.op == op))
        providers = list(dict.fromkeys(r.provider for r in timed if r.op == op))
        width = 0.8 / len(providers)
        for j, provider in enumerate(providers):
            ms = {r.shape: r.ms for r in timed if r.op == op and r.provider == provider}
            xs = [i + j * width for i, shape in enumerate(shapes) if shape in ms]
            ax.bar(xs, [ms[shape] for shape in shapes if shape in ms], width, label=provider)
        ax.set_xticks([i + 0.4 - width / 2 for i in range(len(shapes))], shapes, fontsize=8)
        ax.set_yscale("log")
        ax.set_ylabel("ms")
        ax.set_title(op, fontsize=10)
        ax.legend(fontsize=7)
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def against_base(rows: list[Row], base_csv: Path, ref: str) -> str:
    """Markdown: each timed row beside the same op/shape/provider measured at git ``ref`` (same machine, one run)."""
    with open(base_csv) as f:
        base = {(r["op"], r["shape"], r["provider"]): float(r["ms"]) for r in csv.DictReader(f) if r["ms"]}
    lines = [f"| op | shape | provider | {ref} ms | now ms | speed-up |", "|---|---|---|---:|---:|---:|"]
    for r in rows:
        before = base.get((r.op, r.shape, r.provider))
        if r.ms is None or before is None:
            continue
        lines.append(f"| {r.op} | {r.shape} | {r.provider} | {before:.3f} | {r.ms:.3f} | {before / r.ms:.2f}× |")
    return "\n".join(lines) + "\n"


def run_at(ref: str, argv: list[str], out_dir: Path) -> Path:
    """Run ``python -m benchmarks`` with ``argv`` on a detached worktree of git ``ref``: its Python sources, and
    whatever native extension this environment imports (rebuild at ``ref`` to compare C++ changes); returns the
    output folder."""
    import os
    import sys
    import tempfile

    root = Path(subprocess.run(["git", "rev-parse", "--show-toplevel"], capture_output=True, text=True).stdout.strip())
    tree = Path(tempfile.mkdtemp(prefix="fls-base-"))
    subprocess.run(["git", "-C", str(root), "worktree", "add", "--detach", str(tree), ref], check=True)
    try:
        env = dict(os.environ, PYTHONPATH=f"{tree}{os.pathsep}{tree / 'python'}")
        subprocess.run(
            [sys.executable, "-m", "benchmarks", *argv, "--out", str(out_dir)], cwd=tree, env=env, check=True
        )
    finally:
        subprocess.run(["git", "-C", str(root), "worktree", "remove", "--force", str(tree)], check=False)
    return out_dir


__all__ = ["against_base", "run", "run_at", "stem", "time_ms", "verify", "write"]
