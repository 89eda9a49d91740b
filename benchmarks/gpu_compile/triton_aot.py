"""One recorded Triton launch compiled for a target with ``triton.compile`` (Triton's bundled ptxas), and what the
compile tells: registers and spills (ptxas -v), shared memory, tensor-core instructions (the PTX)."""

from __future__ import annotations

import contextlib
import io
import re
import time

import triton
from triton import knobs
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource

from benchmarks.gpu_compile import Target, programs_per_sm
from benchmarks.gpu_compile.capture import Launch
from benchmarks.gpu_compile.table import Row

_REGISTERS = re.compile(r"Used (\d+) registers")
_SPILLS = re.compile(r"(\d+) bytes spill stores, (\d+) bytes spill loads")


def tensor_cores(ptx: str) -> str:
    """The tensor-core instruction a kernel issues: "wgmma" (Hopper's warpgroup MMA), "mma.sync" (Ampere's) or
    "none" (FMA on the CUDA cores)."""
    if "wgmma.mma_async" in ptx:
        return "wgmma"
    return "mma.sync" if re.search(r"\bmma\.sync\.", ptx) else "none"


def ptxas_resources(log: str) -> tuple[int, int]:
    """(registers, spilled bytes: stores + loads) of the one entry function in a ``ptxas -v`` log."""
    registers = _REGISTERS.search(log)
    spills = _SPILLS.search(log)
    if registers is None or spills is None:
        raise ValueError(f"no resource line in the ptxas log:\n{log}")
    return int(registers.group(1)), int(spills.group(1)) + int(spills.group(2))


def compile_launch(launch: Launch, target: Target) -> Row:
    """``launch`` compiled for ``target`` as its resource row (``error`` set, resources 0, when it fails)."""
    row = Row(
        family="triton", kernel=launch.name, op=launch.op, case=launch.case, dtype=launch.dtype,
        precision=launch.precision, config=launch.config, target=target.name, warps=launch.num_warps,
        stages=launch.num_stages,
    )  # fmt: skip
    start = time.perf_counter()
    log = io.StringIO()
    try:
        with knobs.nvidia.scope(), knobs.compilation.scope(), contextlib.redirect_stdout(log):
            knobs.nvidia.dump_ptxas_log = True  # Triton prints ptxas -v to stdout
            knobs.compilation.always_compile = True  # a cached kernel would skip ptxas and its log
            compiled = triton.compile(
                ASTSource(launch.kernel, launch.signature, launch.constexprs, launch.attrs),
                target=GPUTarget("cuda", target.cc, 32),
                options={"num_warps": launch.num_warps, "num_stages": launch.num_stages},
            )
        row.registers, row.spills = ptxas_resources(log.getvalue())
        row.shared = compiled.metadata.shared
        row.tensor_cores = tensor_cores(compiled.asm["ptx"])
        row.programs_per_sm = programs_per_sm(target, row.registers, row.warps, row.shared)
    except Exception as exc:  # noqa: BLE001 — a failed compile is a row of the table, not the end of the sweep
        row.error = f"{type(exc).__name__}: {str(exc).strip().splitlines()[0] if str(exc).strip() else ''}"
    row.seconds = time.perf_counter() - start
    return row
