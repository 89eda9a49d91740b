"""Timing with a verify step: every provider is checked against the float64 reference before it is timed."""

from __future__ import annotations

import csv
import datetime
import platform
import subprocess
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from benchmarks import registry
from benchmarks.peaks import Peaks
from benchmarks.timer import Deadline, median_ms
from fls_kernels.testing import poison_outputs, rel_error, tolerance


class VerifyError(AssertionError):
    """A provider's output disagrees with the reference beyond the tolerance table."""


@dataclass
class Row:
    op: str
    shape: str
    provider: str
    precision: str
    device: str
    ms: float | None
    error: float | None
    note: str = ""


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
        raise VerifyError(f"{case.op}/{provider} on {case.shape}: relative error {worst:.2e} > {tol:.0e}")
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
    ``seconds``, cases not started by then are listed as not timed (so a time-limited run still tabulates)."""
    rows = []
    deadline = Deadline(seconds)
    for op in ops:
        for case in registry.cases(op, shapes, list(groups), precision):
            name = case.shape
            for provider in providers:
                why = registry.unavailable(op, provider, device) or deadline.note()
                if why is not None:
                    rows.append(Row(op, name, provider, precision, device, None, None, why))
                    continue
                yardstick = provider in registry.YARDSTICKS
                error = None if yardstick else verify(case, provider, device)
                ms = time_ms(case, provider, device)
                rows.append(Row(op, name, provider, precision, device, ms, error, "yardstick" if yardstick else ""))
                shown = "yardstick" if error is None else f"err {error:.1e}"
                print(f"{op:24} {name:24} {provider:18} {ms:9.3f} ms  {shown}", flush=True)
    return rows


def _case(row: Row) -> registry.Case:
    if row.shape in registry.GROUPS:
        return registry.Case.group(row.op, row.shape, row.precision)
    m, n = next((m, n) for s, m, n in registry.SHAPES if s == row.shape)
    return registry.Case(row.op, row.shape, m, n, row.precision)


def stamp(device: str) -> dict[str, str]:
    """Device, versions, commit and timestamp carried by every CSV row."""
    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], capture_output=True, text=True)
        if commit and dirty.stdout.strip():
            commit += "+uncommitted"
    except OSError:
        commit = ""
    try:
        import triton

        triton_version = triton.__version__
    except ImportError:
        triton_version = ""
    name = torch.cuda.get_device_name() if device == "cuda" else (platform.processor() or platform.machine())
    return {
        "gpu_or_cpu": name,
        "torch": torch.__version__,
        "triton": triton_version,
        "commit": commit or "unknown",
        "timestamp": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    }


def stamp_line(device: str) -> str:
    """One line naming where and on what a result was measured."""
    meta = stamp(device)
    return f"Measured on {meta['gpu_or_cpu']}, torch {meta['torch']}, commit {meta['commit']}, {meta['timestamp']}."


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
    header = ["op", "shape", "provider", "precision", "device", "ms", "rel_error", "note"]
    table = [
        [r.op, r.shape, r.provider, r.precision, r.device]
        + ["" if r.ms is None else f"{r.ms:.4f}", "" if r.error is None else f"{r.error:.2e}", r.note]
        for r in rows
    ]
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
    csv_path, md_path = write_tables(out_dir, name, header, table, lines, meta)
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


def write_tables(
    out_dir: str | Path, name: str, header: list[str], rows: list[list[object]], markdown: list[str], meta: dict
) -> tuple[Path, Path]:
    """The two outputs of a timing benchmark in ``out_dir`` (created if needed): ``<name>.csv`` — ``header``, then
    each row of ``rows`` (None as an empty cell) with the stamp ``meta`` (:func:`stamp`) appended to every one —
    and ``<name>.md``, the lines of ``markdown``."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    csv_path, md_path = out / f"{name}.csv", out / f"{name}.md"
    write_stamped_csv(csv_path, header, rows, meta)
    md_path.write_text("\n".join(markdown) + "\n")
    return csv_path, md_path


def write_stamped_csv(path: Path, header: list[str], rows: Iterable[Sequence[object]], meta: dict) -> Path:
    """``header`` and each row (None as an empty cell) with the stamp ``meta`` (:func:`stamp`) appended to every
    one; returns ``path``."""
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow([*header, *meta])
        for row in rows:
            w.writerow(["" if v is None else v for v in row] + list(meta.values()))
    return path


def write_study(
    out_dir: str | Path, name: str, fields: list[str], rows: list[dict], text: str, stamp: str
) -> tuple[Path, Path]:
    """The two outputs of a quality study in ``out_dir`` (created if needed): ``<name>.csv`` (:func:`write_csv` of
    ``rows`` over ``fields``) and ``<name>.md``, its table ``text`` and then the ``stamp`` line."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    md = out / f"{name}.md"
    md.write_text(f"{text}\n\n{stamp}\n")
    return write_csv(out / f"{name}.csv", fields, rows), md


def write_csv(path: Path, fields: list[str], rows: list[dict]) -> Path:
    """``rows`` as a CSV with a header of ``fields`` (other keys of a row are left out); returns ``path``."""
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=fields, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)
    return path
