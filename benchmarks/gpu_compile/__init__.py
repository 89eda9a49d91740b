"""Every kernel compiled ahead of time for sm_90 (H100/H200) and sm_80 (A100) on a machine without a GPU.

    python -m benchmarks.gpu_compile                        # make gpu-compile: the full sweep, both targets
    python -m benchmarks.gpu_compile --subset ci --out DIR  # what `make test` compiles (test_gpu_compile.py)

Triton: every launch the wrappers of ``fls_kernels/backends/triton`` make — each kernel, each autotune config
the pruning keeps on the target, each precision mode and input dtype, each constexpr branch — is recorded by
running the wrappers under a stand-in driver (:mod:`.capture`), then compiled with ``triton.compile`` for the
target (:mod:`.triton_aot`). CUDA: ``csrc/cuda/*.cu`` through nvcc from the PyPI wheels with ``-Xptxas -v``, and
``csrc/*.cpp`` with ``FLS_WITH_CUDA`` through the host compiler (:mod:`.nvcc`). Each compiled kernel is one row
of the resource table (:mod:`.table`): registers, spills, shared memory, warps, stages, tensor-core instructions
and programs per SM, written as CSV and markdown under ``--out``.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Target:
    """A GPU architecture's per-SM limits (CUDA's compute capability tables).

    Attributes:
        name: "sm_90"; cc: compute capability as an integer (90).
        max_shared: bytes of shared memory one program may use (the opt-in maximum Triton checks at launch).
        sm_shared: bytes of shared memory per SM; each resident program also takes ``reserved_shared`` of it.
        sms: SMs of the device it stands for (H100 SXM: 132, A100: 108), for persistent launches.
    """

    name: str
    cc: int
    max_shared: int
    sm_shared: int
    sms: int
    registers: int = 65536
    threads: int = 2048
    blocks: int = 32
    reserved_shared: int = 1024


TARGETS: dict[str, Target] = {
    "sm_90": Target("sm_90", 90, max_shared=227 * 1024, sm_shared=228 * 1024, sms=132),
    "sm_80": Target("sm_80", 80, max_shared=163 * 1024, sm_shared=164 * 1024, sms=108),
}


def programs_per_sm(target: Target, registers: int, warps: int, shared: int) -> int:
    """Programs (thread blocks) resident on one SM: min over threads, registers, shared memory and the block cap.

    Registers are allocated per warp in units of 256 (8 per thread); a program takes its shared memory plus the
    ``reserved_shared`` the runtime keeps per program. 0 when none fits (more shared memory than ``max_shared``).
    """
    if shared > target.max_shared:
        return 0
    threads = warps * 32
    per_warp = -(-max(registers, 1) * 32 // 256) * 256
    by_registers = (target.registers // per_warp) // warps
    by_shared = target.sm_shared // (shared + target.reserved_shared)
    return min(target.threads // threads, by_registers, by_shared, target.blocks)
