"""The native sources compiled for a GPU without one: ``csrc/cuda/*.cu`` through nvcc from the PyPI wheels
(``nvidia-cuda-nvcc``, ``-runtime``, ``-cccl``: ``site-packages/nvidia/cu13``) with ``-Xptxas -v``, and
``csrc/*.cpp`` with ``FLS_WITH_CUDA`` through the host compiler, so the registration is checked with CUDA on.

The flags are the extension's (setup.py, and torch's ``COMMON_NVCC_FLAGS``). torch's CPU wheel ships the
ATen/c10 CUDA headers but not the generated ``c10/cuda/impl/cuda_cmake_macros.h``; a one-line stand-in is put
on the include path when it is missing. Tensor-core use is read from the SASS (Triton's bundled cuobjdump).
"""

from __future__ import annotations

import importlib.util
import os
import re
import shutil
import subprocess
import sys
import sysconfig
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.utils.cpp_extension as cpp_extension

from benchmarks.gpu_compile import Target, programs_per_sm
from benchmarks.gpu_compile.table import Row

ROOT = Path(__file__).resolve().parents[2]
CSRC = ROOT / "csrc"
_ENTRY = re.compile(r"Compiling entry function '(\S+)' for '(sm_\d+)'")
_SPILLS = re.compile(r"(\d+) bytes spill stores, (\d+) bytes spill loads")
_USED = re.compile(r"Used (\d+) registers(?:.*?, (\d+) bytes smem)?")
_SASS_FUNCTION = re.compile(r"Function : (\S+)")


@dataclass(frozen=True)
class Toolchain:
    """nvcc and the CUDA headers of the wheels' ``nvidia/cu*`` folder."""

    root: Path

    @property
    def nvcc(self) -> Path:
        return self.root / "bin" / "nvcc"

    @property
    def include(self) -> Path:
        return self.root / "include"


def toolchain() -> Toolchain | None:
    """The CUDA toolchain installed from the PyPI wheels into this Python environment (None when absent)."""
    spec = importlib.util.find_spec("nvidia")
    for base in spec.submodule_search_locations if spec is not None else []:
        for root in sorted(Path(base).glob("cu*"), reverse=True):
            if (root / "bin" / "nvcc").is_file() and (root / "include" / "cuda_runtime.h").is_file():
                return Toolchain(root)
    return None


def kernel_threads() -> int:
    """Threads per block of the CUDA launches (``kThreads`` of csrc/cuda/launch.cuh; the largest block any uses)."""
    found = re.search(r"constexpr int kThreads = (\d+);", (CSRC / "cuda" / "launch.cuh").read_text())
    if found is None:
        raise ValueError("kThreads not found in csrc/cuda/launch.cuh")
    return int(found.group(1))


def _includes(cuda: Toolchain, shim: Path) -> list[str]:
    dirs = [*cpp_extension.include_paths(), str(cuda.include), sysconfig.get_paths()["include"], str(CSRC)]
    macros = Path(cpp_extension.include_paths()[0]) / "c10" / "cuda" / "impl" / "cuda_cmake_macros.h"
    if not macros.exists():  # the CPU wheel: a stand-in for the header its CMake build would generate
        stand_in = shim / "c10" / "cuda" / "impl" / "cuda_cmake_macros.h"
        stand_in.parent.mkdir(parents=True, exist_ok=True)
        stand_in.write_text("#pragma once\n#define C10_CUDA_BUILD_SHARED_LIBS\n")
        dirs.insert(0, str(shim))
    return [f"-I{d}" for d in dirs]


def _defines() -> list[str]:
    abi = int(torch._C._GLIBCXX_USE_CXX11_ABI)
    return ["-DFLS_WITH_CUDA", "-DFLS_PYTHON_MODULE", "-DTORCH_EXTENSION_NAME=_C", f"-D_GLIBCXX_USE_CXX11_ABI={abi}"]


def parse_ptxas(log: str) -> list[tuple[str, str, int, int, int]]:
    """(mangled kernel, target, registers, spilled bytes, static shared bytes) per entry of a ``ptxas -v`` log."""
    found, current = [], None
    for line in log.splitlines():
        if entry := _ENTRY.search(line):
            current = [entry.group(1), entry.group(2), 0, 0, 0]
        elif current is not None and (spills := _SPILLS.search(line)):
            current[3] = int(spills.group(1)) + int(spills.group(2))
        elif current is not None and (used := _USED.search(line)):
            current[2], current[4] = int(used.group(1)), int(used.group(2) or 0)
            found.append(tuple(current))
            current = None
    return found


def sass_tensor_cores(binary: Path) -> dict[str, str]:
    """Mangled kernel → "wgmma" (HGMMA), "mma.sync" (HMMA) or "none", from the SASS of a cubin or object."""
    import triton

    cuobjdump = Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / "cuobjdump"
    sass = subprocess.run([str(cuobjdump), "-sass", str(binary)], capture_output=True, text=True, check=True).stdout
    kinds: dict[str, str] = {}
    name = None
    for line in sass.splitlines():
        if function := _SASS_FUNCTION.search(line):
            name = function.group(1)
            kinds.setdefault(name, "none")
        elif name is not None and "HGMMA" in line:
            kinds[name] = "wgmma"
        elif name is not None and "HMMA" in line and kinds[name] == "none":
            kinds[name] = "mma.sync"
    return kinds


def demangle(names: list[str]) -> list[str]:
    """Short C++ names of mangled kernels (unchanged without c++filt): ``fls::cuda::`` and anonymous namespaces
    dropped, no parameter list; a library kernel (CUB's) keeps its name, not its template arguments."""
    if not names or shutil.which("c++filt") is None:
        return names
    out = subprocess.run(["c++filt"], input="\n".join(names), capture_output=True, text=True).stdout.splitlines()
    short = []
    for name in out:
        name = name.removeprefix("void ").replace("(anonymous namespace)::", "")
        name = re.sub(r"_V_\w+::", "", name.split("(")[0])
        if name.startswith("fls::"):
            short.append(name.removeprefix("fls::cuda::"))
        else:
            short.append(name.split("<")[0] + ("<…>" if "<" in name else ""))
    return short


def compile_cuda(source: Path, targets: list[Target], cuda: Toolchain, *, device_only: bool = False) -> list[Row]:
    """``source`` (a .cu) compiled for every target in one nvcc call: one row per kernel and target. A kernel of
    csrc is counted at ``kThreads`` threads per program (the largest block any of its launches uses); a library
    kernel it instantiates (CUB's) has no warps or programs per SM (its block size is the library's).

    ``device_only`` (one target): ``-cubin``, the device code alone — what the CI subset runs; otherwise ``-c``,
    host and device code with one ``-gencode`` per target, as the extension builds it."""
    warps = kernel_threads() // 32
    with tempfile.TemporaryDirectory() as tmp:
        tmp_path = Path(tmp)
        if device_only:
            (target,) = targets
            output, mode = tmp_path / "out.cubin", ["-cubin", f"-arch={target.name}"]
        else:
            output = tmp_path / "out.o"
            mode = ["-c", *[f"-gencode=arch=compute_{t.cc},code={t.name}" for t in targets], "-Xcompiler", "-fPIC"]
        command = [
            str(cuda.nvcc), str(source), "-o", str(output), *mode, "-std=c++20", "-O3", "--use_fast_math",
            "-lineinfo", *cpp_extension.COMMON_NVCC_FLAGS, *_defines(), *_includes(cuda, tmp_path / "shim"),
            "-Xptxas", "-v",
        ]  # fmt: skip
        start = time.perf_counter()
        done = subprocess.run(command, capture_output=True, text=True)
        seconds = time.perf_counter() - start
        if done.returncode != 0:
            error = (done.stderr.strip().splitlines() or ["nvcc failed"])[-1]
            return [Row("cuda", source.name, case=source.name, target=t.name, error=error) for t in targets]
        entries = parse_ptxas(done.stderr)
        kinds = sass_tensor_cores(output)
    names = demangle([e[0] for e in entries])
    by_name = {t.name: t for t in targets}
    rows = []
    for (mangled, sm, registers, spills, shared), name in zip(entries, names):
        own = "::" not in name.split("<")[0]  # a kernel of csrc (fls::cuda), not a library's it instantiates
        rows.append(
            Row("cuda", name, case=source.name, target=sm, warps=warps if own else 0, registers=registers,
                spills=spills, shared=shared, tensor_cores=kinds.get(mangled, "none"),
                programs_per_sm=programs_per_sm(by_name[sm], registers, warps, shared) if own else 0,
                seconds=seconds / len(entries))
        )  # fmt: skip
    return rows or [Row("cuda", source.name, case=source.name, seconds=seconds, error="no kernels in the ptxas log")]


def compile_host(source: Path, cuda: Toolchain) -> Row:
    """``source`` (a .cpp of csrc) compiled by the host compiler with FLS_WITH_CUDA and the CUDA headers."""
    compiler = os.environ.get("CXX", "c++")
    with tempfile.TemporaryDirectory() as tmp:
        command = [
            compiler, "-c", str(source), "-o", str(Path(tmp) / "out.o"), "-std=c++20", "-O3", "-fopenmp", "-fPIC",
            *_defines(), *_includes(cuda, Path(tmp) / "shim"),
        ]  # fmt: skip
        start = time.perf_counter()
        done = subprocess.run(command, capture_output=True, text=True)
    error = "" if done.returncode == 0 else (done.stderr.strip().splitlines() or ["failed"])[-1]
    return Row("c++", source.name, case=source.name, target="host", seconds=time.perf_counter() - start, error=error)


def cuda_sources() -> list[Path]:
    return sorted((CSRC / "cuda").glob("*.cu"))


def host_sources() -> list[Path]:
    return sorted(CSRC.glob("*.cpp"))


if __name__ == "__main__":  # a quick look: python -m benchmarks.gpu_compile.nvcc FILE.cu
    from benchmarks.gpu_compile import TARGETS

    for row in compile_cuda(Path(sys.argv[1]), [TARGETS["sm_90"]], toolchain(), device_only=True):
        print(row)
