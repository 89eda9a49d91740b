"""The resource table as markdown: every row (``table.md``), and the per-kernel summary for benchmarks/README.md."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence

from benchmarks.gpu_compile.table import Row

_KIB = 1024


def _kib(b: int) -> str:
    return f"{b / _KIB:.1f}"


def full_table(rows: Sequence[Row]) -> str:
    """One markdown line per row."""
    head = ("target", "kernel", "case", "dtype", "precision", "config", "warps", "stages", "registers",
            "spills (B)", "shared (KiB)", "tensor cores", "programs/SM", "error")  # fmt: skip
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        cells = (r.target, f"`{r.kernel}`", r.case, r.dtype, r.precision, r.config, r.warps or "", r.stages or "",
                 r.registers, r.spills, _kib(r.shared), r.tensor_cores, r.programs_per_sm or "", r.error)  # fmt: skip
        lines.append("| " + " | ".join(str(c) for c in cells) + " |")
    return "\n".join(lines) + "\n"


def _span(values: list[int]) -> str:
    return f"{min(values)}–{max(values)}" if min(values) != max(values) else str(values[0])


def markdown(rows: Sequence[Row], meta: dict[str, str], subset: str, seconds: float) -> str:
    """Totals per target, then one line per (kernel, target): how many variants compiled, their registers,
    spills, shared memory, tensor-core instructions and programs per SM."""
    ok = [r for r in rows if not r.error]
    lines = [
        f"Compiled on {meta['gpu_or_cpu']} with no GPU (`make gpu-compile`, subset {subset}, {seconds:.0f} s): "
        f"torch {meta['torch']}, triton {meta['triton']} (its bundled ptxas), nvcc {meta['nvcc']} from the PyPI "
        f"wheels, commit {meta['commit']}, {meta['timestamp']}. Limits per SM: 64K registers, 2048 threads, 32 "
        "programs, 227 KiB of shared memory per program on sm_90 and 163 KiB on sm_80 (+1 KiB reserved each). "
        "Every row: `out/gpu-compile/rows.csv`, `table.md`; the tiles allowed to spill, how much and why: "
        "`SPILLS_ALLOWED` in tests/triton/test_gpu_compile.py.",
        "",
    ]
    for target in sorted({r.target for r in rows if r.target != "host"}, reverse=True):
        mine = [r for r in ok if r.target == target]
        triton_rows = [r for r in mine if r.family == "triton"]
        kernels = {r.kernel for r in triton_rows}
        spilled = sorted({r.kernel for r in mine if r.spills})
        kinds = defaultdict(int)
        for r in triton_rows:
            kinds[r.tensor_cores] += 1
        lines.append(
            f"- **{target}**: {len(triton_rows)} Triton compiles of {len(kernels)} kernels "
            f"({', '.join(f'{k}: {v}' for k, v in sorted(kinds.items()))}), "
            f"{len([r for r in mine if r.family == 'cuda'])} CUDA kernels; failed: "
            f"{len([r for r in rows if r.target == target and r.error])}; most registers "
            f"{max((r.registers for r in mine), default=0)}, most shared memory "
            f"{_kib(max((r.shared for r in mine), default=0))} KiB; spills in "
            f"{len([r for r in mine if r.spills])} compiles ({', '.join(f'`{k}`' for k in spilled) or 'none'})."
        )
    host = [r for r in rows if r.target == "host"]
    if host:
        lines.append(
            "- **host, FLS_WITH_CUDA**: " + ", ".join(f"`{r.kernel}` {'failed' if r.error else 'ok'}" for r in host)
        )
    lines += [
        "",
        "| kernel | target | compiles | configs | registers | spills (compiles, most B) | shared (KiB) | tensor "
        "cores | programs/SM |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    # A Triton kernel per line; the CUDA kernels per source file (every kernel of it is a line of table.md).
    groups: dict[tuple[str, str, str], list[Row]] = defaultdict(list)
    for r in ok:
        if r.family == "triton":
            groups[(r.family, f"`{r.kernel}`", r.target)].append(r)
        elif r.family == "cuda":
            groups[(r.family, f"csrc/cuda/{r.case}", r.target)].append(r)
    for (family, kernel, target), group in sorted(groups.items(), key=lambda kv: (kv[0][0] != "triton", kv[0])):
        if family == "cuda":
            kernel += f" ({len({r.kernel for r in group})} kernels)"
        spills = [r.spills for r in group if r.spills]
        fits = [r.programs_per_sm for r in group if r.warps]
        kinds = "/".join(sorted({r.tensor_cores for r in group}))
        lines.append(
            f"| {kernel} | {target} | {len(group)} | {len({r.config for r in group}) if family == 'triton' else ''} "
            f"| {_span([r.registers for r in group])} | {f'{len(spills)}, {max(spills)}' if spills else '0'} "
            f"| {_kib(min(r.shared for r in group))}–{_kib(max(r.shared for r in group))} | {kinds} "
            f"| {_span(fits) if fits else ''} |"
        )
    return "\n".join(lines) + "\n"
