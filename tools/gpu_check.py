"""The GPU check: build, test and benchmark on a CUDA machine that has no package registry, in one call.

    python3 -m tools.gpu_check --out "$OUT"            # make gpu-check
    python3 -m tools.gpu_check --out out/gpu --dry-run  # the plan, every stage run as an echo (any machine)

Stages, in order, each with its own time limit (cut to what is left of ``--budget``, default 420 s) and its
wall time printed; a failing or timed-out stage does not stop the next one:

    install      pip install --no-deps --no-build-isolation -e .  (CUDA extension for sm_90 only, all cores)
    info         python -m fls_kernels info
    gpu-tests    pytest -m gpu tests                                (large layers, the BERT-base step, …)
    op-tests     pytest tests/ops tests/triton -k "cuda or triton"  (every op on the cuda and triton backends)
    kernels-*    python -m benchmarks kernels --device cuda, fp32 / tf32 / bf16 (FLS_AUTOTUNE=quick)
    compiled     the reference under torch.compile at BERT-base 768×768 (the baseline of the 768² target)
    select       python -m benchmarks select --device cuda

What comes back under ``--out`` stays within the device tool's limits (≤ 8 files, no folder): summary.md (one
row per stage), gpu-check.log (every stage's output), the four markdown tables under their ``out/bench`` names
(copy them there and run ``python -m benchmarks readme``) and two CSVs (kernels of every precision and the
compiled reference, selection).
It uses the standard library only (and the ``benchmarks`` package imports nothing): it runs before the
package is installed.
"""

from __future__ import annotations

import argparse
import csv
import os
import shlex
import signal
import subprocess
import sys
import time
from collections.abc import Sequence as Seq
from dataclasses import dataclass, field
from pathlib import Path

#: The whole check must fit one device call with room to spare (the issue's limit: 7 minutes).
BUDGET_S = 420
#: At most this many files come back from $OUT.
MAX_FILES = 8
TIMEOUT_RC = 124


@dataclass(frozen=True)
class Stage:
    """One step of the check: ``command`` run from the repository root with ``env`` added, for ``timeout`` s.

    ``seconds_flag``: a flag of the command taking the seconds it may spend (benchmarks: start no case after
    them), given the stage's limit less a margin, so a stage cut short still writes its tables.
    """

    name: str
    command: list[str]
    timeout: float
    env: dict[str, str] = field(default_factory=dict)
    seconds_flag: str | None = None


@dataclass
class Result:
    stage: Stage
    rc: int | None  # None: not run (no time left); TIMEOUT_RC: killed at its limit
    seconds: float
    limit: float


def install_stage(python: str, cores: int) -> Stage:
    """``pip install --no-deps --no-build-isolation -e .`` with the CUDA extension built for sm_90 on ``cores``."""
    build = {"FLS_BUILD_EXT": "1", "FLS_CUDA_ARCHS": "9.0", "MAX_JOBS": str(cores)}
    return Stage(
        "install", [python, "-m", "pip", "install", "--no-deps", "--no-build-isolation", "-e", "."], 150, build
    )


def stages(python: str, scratch: Path, cores: int) -> list[Stage]:
    """The plan: what each stage runs and for how long at most (the limits add up to :data:`BUDGET_S`)."""
    quick = {"FLS_AUTOTUNE": "quick", "PYTHONUNBUFFERED": "1"}
    pytest = [python, "-m", "pytest", "-q", "-rs", "-p", "no:cacheprovider", "--timeout=60"]
    gpu, products = ["reference", "cuda", "triton", "gemms"], ["kron_qv", "surgeon_update_"]
    bert, square = "bert-attn 768x768", "square 4096x4096"

    def kernels(precision: str, providers: Seq, ops: Seq = (), shapes: Seq = (), out: Path = scratch) -> list[str]:
        cmd = [python, "-m", "benchmarks", "kernels", "--device", "cuda", "--precision", precision, "--out", str(out)]
        return (
            cmd
            + ["--providers", *providers]
            + (["--ops", *ops] if ops else [])
            + (["--shapes", *shapes] if shapes else [])
        )

    tf32_ops = [*products, "kron_qv_grouped", "surgeon_update_grouped_"]
    select = [python, "-m", "benchmarks", "select", "--device", "cuda", "--out", str(scratch)]
    timed = dict(env=quick, seconds_flag="--seconds")
    return [
        install_stage(python, cores),
        Stage("info", [python, "-m", "fls_kernels", "info"], 15),
        Stage("gpu-tests", [*pytest, "-m", "gpu", "tests"], 60, quick),
        Stage("op-tests", [*pytest, "tests/ops", "tests/triton", "-k", "cuda or triton"], 75, quick),
        Stage("kernels-fp32", kernels("fp32", gpu), 45, **timed),
        Stage("kernels-tf32", kernels("tf32", gpu, tf32_ops), 20, **timed),
        Stage("kernels-bf16", kernels("bf16", gpu, products, [bert, square]), 15, **timed),
        Stage("compiled", kernels("fp32", ["reference+compile"], products, [bert], scratch / "compiled"), 15, **timed),
        Stage("select", select, 25, **timed),
    ]


def with_seconds(stage: Stage, limit: float) -> Stage:
    """``stage`` told to start no work after ``limit`` less a margin (a quarter of it, at most 10 s)."""
    seconds = f"{limit - min(10.0, limit / 4):.0f}"
    return Stage(stage.name, [*stage.command, stage.seconds_flag, seconds], stage.timeout, stage.env)


def dry(stage: Stage) -> Stage:
    """The stage with its command replaced by an echo of it (to check the harness anywhere)."""
    shown = " ".join(f"{k}={v}" for k, v in stage.env.items()) + " " + shlex.join(stage.command)
    return Stage(stage.name, [sys.executable, "-c", f"print({('would run: ' + shown.strip())!r})"], stage.timeout)


def run_stage(stage: Stage, limit: float, log, cwd: Path) -> tuple[int, float]:
    """(exit status, seconds) of ``stage`` killed with its whole process group at ``limit`` seconds."""
    log.write(f"\n===== {stage.name}: {shlex.join(stage.command)} (limit {limit:.0f} s)\n")
    log.flush()
    start = time.perf_counter()
    proc = subprocess.Popen(
        stage.command,
        cwd=cwd,
        env={**os.environ, **stage.env},
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,  # its own process group: a timeout kills pytest workers and nvcc too
    )
    try:
        rc = proc.wait(timeout=limit)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        rc = TIMEOUT_RC
    seconds = time.perf_counter() - start
    log.write(f"===== {stage.name}: exit {rc} after {seconds:.1f} s\n")
    log.flush()
    return rc, seconds


def run(
    plan: list[Stage],
    out: Path,
    *,
    budget: float = BUDGET_S,
    cwd: Path = Path("."),
    dry_run: bool = False,
    echo=print,
    log_name: str = "gpu-check.log",
) -> list[Result]:
    """Every stage in order, each within min(its limit, what is left of ``budget``) — as an echo of its command
    with ``dry_run`` — into ``out``/``log_name``."""
    out.mkdir(parents=True, exist_ok=True)
    deadline = time.perf_counter() + budget
    results = []
    with open(out / log_name, "w") as log:
        for stage in plan:
            left = deadline - time.perf_counter()
            limit = min(stage.timeout, left)
            if left < 1:
                results.append(Result(stage, None, 0.0, max(left, 0.0)))
                echo(f"[{stage.name}] not run: the {budget:.0f} s budget is spent")
                continue
            if stage.seconds_flag:  # the command stops starting work in time to write its tables
                stage = with_seconds(stage, limit)
            rc, seconds = run_stage(dry(stage) if dry_run else stage, limit, log, cwd)
            results.append(Result(stage, rc, seconds, limit))
            echo(f"[{stage.name}] {_state(rc)} in {seconds:.1f} s (limit {limit:.0f} s)")
    return results


def collect(scratch: Path, out: Path) -> list[Path]:
    """The benchmark outputs of ``scratch`` as at most six flat files under ``out``: the markdown tables under
    their own names, the kernels CSVs of every precision merged (one header; the compiled reference's rows
    too — its table is in the log), the selection CSV."""
    written = []
    for md in sorted(scratch.glob("*.md")):
        (out / md.name).write_text(md.read_text())
        written.append(out / md.name)
    kernels = sorted(scratch.glob("kernels-*.csv")) + sorted((scratch / "compiled").glob("kernels-*.csv"))
    if kernels:
        header, rows = None, []
        for path in kernels:
            with open(path, newline="") as f:
                reader = csv.reader(f)
                first = next(reader, None)
                header = header or first
                rows += list(reader)
        with open(out / "kernels.csv", "w", newline="") as f:
            writer = csv.writer(f)
            writer.writerow(header)
            writer.writerows(rows)
        written.append(out / "kernels.csv")
    for path in sorted(scratch.glob("select-*.csv")):
        (out / "select.csv").write_text(path.read_text())
        written.append(out / "select.csv")
    return written


def _state(rc: int | None) -> str:
    if rc is None:
        return "not run"
    return "ok" if rc == 0 else ("timed out" if rc == TIMEOUT_RC else f"failed (exit {rc})")


def summary(results: list[Result], budget: float) -> str:
    """A markdown table, one row per stage, and the total."""
    lines = ["| stage | result | seconds | limit | command |", "|---|---|---:|---:|---|"]
    for r in results:
        state = _state(r.rc)
        lines.append(
            f"| {r.stage.name} | {state} | {r.seconds:.1f} | {r.limit:.0f} | `{shlex.join(r.stage.command)}` |"
        )
    total = sum(r.seconds for r in results)
    passed = sum(r.rc == 0 for r in results)
    lines += ["", f"Total {total:.1f} s of a {budget:.0f} s budget; {passed}/{len(results)} stages ok."]
    return "\n".join(lines) + "\n"


def device_parser(name: str, doc: str, budget: float) -> argparse.ArgumentParser:
    """The options every device script takes: ``--out`` ($OUT), ``--budget``, ``--python``, ``--scratch`` (under
    /tmp/fls-``name``) and ``--dry-run``."""
    parser = argparse.ArgumentParser(prog=f"python -m benchmarks.{name.replace('-', '_')}", description=doc)
    parser.add_argument("--out", default=os.environ.get("OUT", f"out/{name}"), help="results (default: $OUT)")
    parser.add_argument("--budget", type=float, default=budget, help="seconds for the whole run")
    parser.add_argument("--python", default=sys.executable, help="the interpreter that holds torch there")
    parser.add_argument("--scratch", default=f"/tmp/fls-{name}", help="where the benchmarks write in full")
    parser.add_argument("--dry-run", action="store_true", help="run every stage as an echo of its command")
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = device_parser("gpu-check", __doc__.split("\n\n")[0], BUDGET_S)
    args = parser.parse_args(argv)
    out, scratch = Path(args.out), Path(args.scratch)
    scratch.mkdir(parents=True, exist_ok=True)
    plan = stages(args.python, scratch, os.cpu_count() or 1)
    results = run(plan, out, budget=args.budget, cwd=Path(__file__).resolve().parents[1], dry_run=args.dry_run)
    files = collect(scratch, out)
    table = summary(results, args.budget)
    (out / "summary.md").write_text(table)
    print(table)
    print("wrote", ", ".join(str(p) for p in [out / "summary.md", out / "gpu-check.log", *files]))
    return 0 if all(r.rc == 0 for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
