"""Every kernel compiled for sm_90 and sm_80 without a GPU (``benchmarks.gpu_compile``), and what the compile tells.

The compile runs in a subprocess without ``TRITON_INTERPRET`` (the kernels read it at import): here the CI subset
(one config per kernel × precision, both targets, nvcc for sm_90); under ``make gpu-compile`` the full sweep's
table is read instead (``FLS_GPU_COMPILE_OUT``). The nvcc checks skip when the toolchain wheels are absent,
unless ``FLS_REQUIRE_CUDA_TOOLCHAIN=1`` (``make test``), where they fail.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from benchmarks.gpu_compile import TARGETS, nvcc
from benchmarks.gpu_compile.table import Row, read_csv

ROOT = Path(__file__).resolve().parents[2]

_PROLOGUE = (
    "the fused prologue holds two or three operand tiles (A ⊙ V; W, A and the mask) with their 64-bit row pointers "
    "beside the accumulator: past 255 registers ptxas spills, most where rows are not 16-aligned (no vector loads, "
    "a pointer per element)"
)
_KEPT = "kept until a device times them against the tiles that do not spill (the autotuner picks by time)"
#: GEMM tile → (most spilled bytes with 16-aligned rows, with unaligned rows, why): what the GEMM kernels may
#: spill (triton 3.6, both targets, any kernel, precision and dtype). Any other kernel or tile, or more bytes,
#: fails: the caps are the measured maxima rounded up.
SPILLS_ALLOWED: dict[str, tuple[int, int, str]] = {
    "256×128×32": (4096, 65536, f"128 fp32 accumulators per thread; {_PROLOGUE}; {_KEPT}"),
    "128×256×32": (4096, 20480, f"128 fp32 accumulators per thread; {_PROLOGUE}; {_KEPT}"),
    "128×128×32": (512, 16384, f"64 fp32 accumulators per thread; {_PROLOGUE}; {_KEPT}"),
    "128×64×32": (512, 32768, f"64 fp32 accumulators per thread; {_PROLOGUE}; {_KEPT}"),
    "64×128×32": (512, 4096, f"64 fp32 accumulators per thread; {_PROLOGUE}; {_KEPT}"),
    "64×64×64": (128, 20480, f"bf16 only: 32 accumulators and 64-deep operand tiles per thread; {_PROLOGUE}"),
    "64×64×32": (16, 1024, f"32 accumulators per thread: one 8-byte slot in a few kernels when aligned; {_PROLOGUE}"),
    "32×64×32": (0, 32, "unaligned rows only, in the grouped first passes (a pointer per element of every operand)"),
    "16×32×32": (0, 32, "unaligned rows only, in the grouped surgeon update's first pass (five operand streams)"),
}


def _block_m(row: Row) -> int:
    return int(row.config.split("×")[0])


@pytest.fixture(scope="module")
def rows(tmp_path_factory) -> list[Row]:
    given = os.environ.get("FLS_GPU_COMPILE_OUT")
    if given:
        return read_csv(Path(given) / "rows.csv")
    out = tmp_path_factory.mktemp("gpu-compile")
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    done = subprocess.run(
        [sys.executable, "-m", "benchmarks.gpu_compile", "--subset", "ci", "--out", str(out)],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=900,
    )  # fmt: skip
    assert (out / "rows.csv").exists(), done.stdout + done.stderr
    return read_csv(out / "rows.csv")


def _triton(rows: list[Row]) -> list[Row]:
    return [r for r in rows if r.family == "triton"]


def test_everything_compiles(rows):
    failed = [f"{r.target} {r.kernel} {r.case} {r.dtype} {r.precision} {r.config}: {r.error}" for r in rows if r.error]
    assert not failed, "\n".join(failed)


def test_every_kernel_compiled_for_both_targets_in_every_precision(rows):
    from benchmarks.gpu_compile.capture import PRECISIONS, kernels

    gemm = {r.kernel for r in _triton(rows) if r.precision}
    for target in TARGETS:
        mine = [r for r in _triton(rows) if r.target == target]
        assert {r.kernel for r in mine} == set(kernels()), target
        for kernel in gemm:
            assert {r.precision for r in mine if r.kernel == kernel} == set(PRECISIONS), (target, kernel)


def _spill_cap(row: Row) -> int:
    if row.family != "triton" or not row.precision or row.config not in SPILLS_ALLOWED:
        return 0
    aligned, unaligned, _ = SPILLS_ALLOWED[row.config]
    return unaligned if row.case.startswith("unaligned") else aligned


def test_no_spills_beyond_the_listed_exceptions(rows):
    over = [r for r in rows if r.spills > _spill_cap(r)]
    assert not over, "\n".join(f"{r.target} {r.kernel} {r.case} {r.precision} {r.config}: {r.spills} B" for r in over)


def test_no_kept_config_exceeds_the_targets_shared_memory(rows):
    # Every Triton row is a config the autotuner's pruning keeps on that target (see capture.launches).
    over = [r for r in rows if r.shared > TARGETS.get(r.target, TARGETS["sm_90"]).max_shared]
    assert not over, "\n".join(f"{r.target} {r.kernel} {r.precision} {r.config}: {r.shared} B" for r in over)


def test_tensor_core_gemms_use_wgmma_on_hopper(rows):
    gemms = [r for r in _triton(rows) if r.target == "sm_90" and r.precision in ("tf32", "bf16") and _block_m(r) >= 64]
    assert gemms
    assert not [r for r in gemms if r.tensor_cores != "wgmma"], "tf32/bf16 tiles of ≥ 64 rows must issue wgmma"
    ampere = [r for r in _triton(rows) if r.target == "sm_80" and r.precision in ("tf32", "bf16")]
    assert {r.tensor_cores for r in ampere} == {"mma.sync"}


def test_fp32_gemms_stay_on_the_cuda_cores(rows):
    assert {r.tensor_cores for r in _triton(rows) if r.precision == "fp32"} == {"none"}


def test_at_least_one_program_fits_per_sm(rows):
    tight = [r for r in rows if r.warps and not r.error and r.programs_per_sm < 1]
    assert not tight, "\n".join(f"{r.target} {r.kernel} {r.config}" for r in tight)


def _native(rows: list[Row]) -> list[Row]:
    native = [r for r in rows if r.family in ("cuda", "c++")]
    if not native:
        reason = "the CUDA toolchain wheels are not installed (make cuda-toolchain)"
        if os.environ.get("FLS_REQUIRE_CUDA_TOOLCHAIN") == "1":
            pytest.fail(reason + f"; toolchain found here: {nvcc.toolchain()}")
        pytest.skip(reason)
    return native


def test_csrc_compiles_with_cuda_for_hopper(rows):
    native = _native(rows)
    sources = {r.case for r in native if r.family == "cuda" and r.target == "sm_90" and not r.error}
    assert sources == {p.name for p in nvcc.cuda_sources()}
    assert {r.kernel for r in native if r.family == "c++" and not r.error} == {p.name for p in nvcc.host_sources()}


# ------------------------------------------------------------------------------------------- parsing, on the CPU
def test_ptxas_log_is_parsed_per_entry_and_target():
    log = """ptxas info    : Compiling entry function '_Z1av' for 'sm_90'
ptxas info    : Function properties for _Z1av
    8 bytes stack frame, 4 bytes spill stores, 12 bytes spill loads
ptxas info    : Used 128 registers, used 1 barriers, 8480 bytes smem, 424 bytes cmem[0]
ptxas info    : Compiling entry function '_Z1bv' for 'sm_80'
ptxas info    : Function properties for _Z1bv
    0 bytes stack frame, 0 bytes spill stores, 0 bytes spill loads
ptxas info    : Used 30 registers, used 0 barriers
"""
    assert nvcc.parse_ptxas(log) == [("_Z1av", "sm_90", 128, 16, 8480), ("_Z1bv", "sm_80", 30, 0, 0)]


def test_programs_per_sm_takes_the_tightest_limit():
    from benchmarks.gpu_compile import programs_per_sm

    h100, a100 = TARGETS["sm_90"], TARGETS["sm_80"]
    assert programs_per_sm(h100, registers=32, warps=4, shared=0) == 16  # threads: 2048 / 128
    assert programs_per_sm(h100, registers=16, warps=1, shared=0) == 32  # the block cap
    assert programs_per_sm(h100, registers=255, warps=8, shared=0) == 1  # 8 warps × 32 × 256 registers
    assert programs_per_sm(h100, registers=64, warps=4, shared=100 * 1024) == 2  # 228 KiB / 101 KiB
    assert programs_per_sm(a100, registers=64, warps=4, shared=100 * 1024) == 1
    assert programs_per_sm(a100, registers=64, warps=4, shared=164 * 1024) == 0  # over the 163 KiB a program may use


def test_tensor_core_instructions_are_read_from_the_ptx():
    from benchmarks.gpu_compile.triton_aot import tensor_cores

    assert tensor_cores("wgmma.mma_async.sync.aligned.m64n64k8.f32.tf32.tf32 {...}") == "wgmma"
    assert tensor_cores("mma.sync.aligned.m16n8k8.row.col.f32.tf32.tf32.f32 {...}") == "mma.sync"
    assert tensor_cores("fma.rn.f32 %f1, %f2, %f3, %f4;") == "none"


# -------------------------------------------------------------------- the configs' pruning knows the device's limit
def _configs():
    import triton

    from fls_kernels.backends.triton._common import gemm_tiles

    return [
        triton.Config({"BLOCK_M": bm, "BLOCK_N": bn, "BLOCK_K": bk, "GROUP_M": 8}, num_warps=w, num_stages=s)
        for bm, bn, bk, w, s in gemm_tiles("full")
    ]


def _tile(c) -> tuple[int, int, int, int]:
    return c.kwargs["BLOCK_M"], c.kwargs["BLOCK_N"], c.kwargs["BLOCK_K"], c.num_stages


@pytest.mark.parametrize("precision", ["fp32", "tf32", "bf16"])
def test_pruning_keeps_only_configs_that_fit_the_device(precision):
    from fls_kernels.backends.triton._common import gemm_shared_bytes, keep_gemm_configs

    big = {"M": 4096, "N": 4096, "K": 4096, "PRECISION": precision}
    for target in TARGETS.values():
        kept = keep_gemm_configs(_configs(), big, target.max_shared)
        assert kept and all(gemm_shared_bytes(*_tile(c)) <= target.max_shared for c in kept)
    on_a100 = {_tile(c) for c in keep_gemm_configs(_configs(), big, TARGETS["sm_80"].max_shared)}
    on_h100 = {_tile(c) for c in keep_gemm_configs(_configs(), big, TARGETS["sm_90"].max_shared)}
    # 256×128×32 in 3 stages takes 224 KiB (compiled for sm_90, tf32): an H100 tile, not an A100 one.
    assert (256, 128, 32, 3) in on_h100 - on_a100
    assert (128, 128, 32, 4) in on_h100 - on_a100 and (128, 128, 32, 3) in on_a100


def test_pruning_reads_the_limit_from_the_current_device():
    from benchmarks.gpu_compile.capture import standing_in
    from fls_kernels.backends.triton._common import prune_gemm_configs

    big = {"M": 4096, "N": 4096, "K": 4096}
    with standing_in(TARGETS["sm_80"]):
        on_a100 = {_tile(c) for c in prune_gemm_configs(_configs(), big, PRECISION="tf32")}
    with standing_in(TARGETS["sm_90"]):
        on_h100 = {_tile(c) for c in prune_gemm_configs(_configs(), big, PRECISION="tf32")}
    assert (256, 128, 32, 3) in on_h100 - on_a100


def test_shared_memory_bound_holds_for_every_compiled_gemm(rows):
    from fls_kernels.backends.triton._common import gemm_shared_bytes

    gemms = [r for r in _triton(rows) if r.precision]
    for r in gemms:
        bm, bn, bk = (int(x) for x in r.config.split("×"))
        assert r.shared <= gemm_shared_bytes(bm, bn, bk, r.stages), (r.target, r.kernel, r.precision, r.config)
