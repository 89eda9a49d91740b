"""``python -m benchmarks.gpu_compile [--subset full|ci] [--targets sm_90 sm_80] [--out DIR] [--jobs N]``.

Writes ``DIR/rows.csv`` (every compiled kernel, stamped), ``DIR/table.md`` (the same as markdown) and
``DIR/gpu-compile.md`` (the summary that ``python -m benchmarks readme`` puts in benchmarks/README.md); exits 1
when anything fails to compile. The CI subset (what ``make test`` runs): one config per kernel × precision on
fp32 inputs for every target, and nvcc on csrc/cuda for sm_90 (device code only) and csrc/*.cpp.
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import sys
import tempfile
import time
from importlib import metadata
from pathlib import Path

from benchmarks.gpu_compile import TARGETS, Target

_TASKS: list[tuple] = []  # filled before the worker processes fork; a worker reads its task by index


def _run(index: int) -> list:
    from benchmarks.gpu_compile import nvcc, triton_aot

    kind, *args = _TASKS[index]
    if kind == "triton":
        return [triton_aot.compile_launch(*args)]
    if kind == "cuda":
        source, targets, toolchain, device_only = args
        return nvcc.compile_cuda(source, targets, toolchain, device_only=device_only)
    return [nvcc.compile_host(*args)]


def tasks(subset: str, targets: list[Target]) -> tuple[list[tuple], str]:
    """What to compile (native sources first: they take longest), and a note on the native toolchain."""
    from benchmarks.gpu_compile import capture, nvcc

    found: list[tuple] = []
    toolchain = nvcc.toolchain()
    if toolchain is None:
        note = "nvcc not found in this environment (`make cuda-toolchain` installs it): csrc not compiled"
    else:
        note = f"nvcc {toolchain.nvcc}"
        ci = subset == "ci"
        native_targets = [TARGETS["sm_90"]] if ci else targets
        found += [("cuda", s, native_targets, toolchain, ci) for s in nvcc.cuda_sources()]
        found += [("c++", s, toolchain) for s in nvcc.host_sources()]
    plan = capture.CI if subset == "ci" else capture.FULL
    for target in targets:
        found += [("triton", launch, target) for launch in capture.launches(target, plan, every_config=subset != "ci")]
    return found, note


def stamp(note: str) -> dict[str, str]:
    """Versions, commit and timestamp of the run (the runner's stamp, plus nvcc's wheel)."""
    from benchmarks.harness import stamp as runner_stamp

    meta = runner_stamp("cpu")
    try:
        meta["nvcc"] = metadata.version("nvidia-cuda-nvcc")
    except metadata.PackageNotFoundError:
        meta["nvcc"] = "absent"
    meta["native"] = note
    return meta


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.gpu_compile", description=__doc__.split("\n\n")[0])
    parser.add_argument("--subset", choices=["full", "ci"], default="full")
    parser.add_argument("--targets", nargs="+", choices=list(TARGETS), default=list(TARGETS))
    parser.add_argument("--out", default="out/gpu-compile")
    parser.add_argument("--jobs", type=int, default=min(2, os.cpu_count() or 1), help="compiles run side by side")
    args = parser.parse_args(argv)
    if os.environ.get("TRITON_INTERPRET", "0") == "1":
        parser.error("unset TRITON_INTERPRET: the kernels read it at import and would compile their CPU branch")

    from benchmarks.gpu_compile import summary, table

    start = time.perf_counter()
    targets = [TARGETS[t] for t in args.targets]
    found, note = tasks(args.subset, targets)
    _TASKS[:] = found
    print(f"{len(found)} compiles ({args.subset}, {' '.join(args.targets)}), {args.jobs} at a time; {note}", flush=True)
    rows = []
    with (
        tempfile.TemporaryDirectory() as cache,
        multiprocessing.get_context("fork").Pool(
            args.jobs, initializer=os.environ.__setitem__, initargs=("TRITON_CACHE_DIR", cache)
        ) as pool,
    ):
        for done, result in enumerate(pool.imap(_run, range(len(found))), 1):
            rows += result
            if done % 100 == 0:
                print(f"  {done}/{len(found)} ({time.perf_counter() - start:.0f} s)", flush=True)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    meta = stamp(note)
    table.write_csv(rows, out / "rows.csv", meta)
    (out / "table.md").write_text(summary.full_table(rows))
    (out / "gpu-compile.md").write_text(summary.markdown(rows, meta, args.subset, time.perf_counter() - start))
    failed = [r for r in rows if r.error]
    for r in failed:
        print(f"FAILED {r.target} {r.kernel} {r.case} {r.dtype} {r.precision} {r.config}: {r.error}", file=sys.stderr)
    print(f"{len(rows)} rows, {len(failed)} failed, {time.perf_counter() - start:.0f} s → {out}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
