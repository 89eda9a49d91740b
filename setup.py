"""Build of fls_kernels and fls_reference, and of the native extension fls_kernels._C.

FLS_BUILD_EXT=auto (default) builds the extension when torch and a compiler are present and warns (never
fails) otherwise; 1 makes a failed build an error; 0 skips it. CUDA kernels (csrc/cuda/*.cu) are added when
torch has CUDA and nvcc is found; FLS_CUDA_ARCHS (e.g. "9.0") sets the target architectures.
"""

from __future__ import annotations

import glob
import os
import warnings

from setuptools import find_packages, setup

MODE = os.environ.get("FLS_BUILD_EXT", "auto")
if MODE not in {"auto", "0", "1"}:
    raise SystemExit(f"FLS_BUILD_EXT must be auto, 0 or 1, got {MODE!r}")


def _extension():
    """(ext_modules, cmdclass) for fls_kernels._C, or empty ones when it is not built."""
    if MODE == "0":
        return [], {}
    try:
        import torch
        from torch.utils.cpp_extension import CUDA_HOME, BuildExtension, CppExtension, CUDAExtension
    except ImportError as exc:
        if MODE == "1":
            raise
        warnings.warn(f"fls_kernels._C not built: torch is not importable at build time ({exc})", stacklevel=1)
        return [], {}

    sources = sorted(glob.glob("csrc/*.cpp")) + sorted(glob.glob("csrc/cpu/*.cpp"))
    cuda_sources = sorted(glob.glob("csrc/cuda/*.cu"))
    cxx = ["-O3", "-std=c++20", "-fopenmp"]
    macros = [("FLS_PYTHON_MODULE", None)]
    with_cuda = bool(cuda_sources) and torch.version.cuda is not None and CUDA_HOME is not None
    if cuda_sources and not with_cuda:
        why = "torch has no CUDA" if torch.version.cuda is None else "nvcc was not found (CUDA_HOME unset)"
        warnings.warn(f"fls_kernels._C: building the CPU kernels only, {why}", stacklevel=1)
    if with_cuda:
        if os.environ.get("FLS_CUDA_ARCHS"):
            os.environ["TORCH_CUDA_ARCH_LIST"] = os.environ["FLS_CUDA_ARCHS"]
        ext = CUDAExtension(
            "fls_kernels._C",
            sources + cuda_sources,
            define_macros=[*macros, ("FLS_WITH_CUDA", None)],
            extra_compile_args={"cxx": cxx, "nvcc": ["-O3", "-std=c++20", "--use_fast_math", "-lineinfo"]},
            extra_link_args=["-fopenmp"],
        )
    else:
        ext = CppExtension(
            "fls_kernels._C",
            sources,
            define_macros=macros,
            extra_compile_args={"cxx": cxx},
            extra_link_args=["-fopenmp"],
        )

    class Build(BuildExtension):
        """In auto mode a failed native build leaves a pure-Python install with a warning."""

        def run(self):
            try:
                super().run()
            except Exception as exc:  # noqa: BLE001
                if MODE == "1":
                    raise
                warnings.warn(f"fls_kernels._C build failed, continuing without it: {exc}", stacklevel=1)

    return [ext], {"build_ext": Build.with_options(use_ninja=True)}


ext_modules, cmdclass = _extension()

setup(
    name="fls_kernels",
    version="0.1.0",
    description="FishLeg Surgeon pruning with fused Triton and C++/CUDA kernels",
    python_requires=">=3.10",
    packages=find_packages(include=["fls_kernels", "fls_kernels.*"]) + ["fls_reference"],
    package_dir={"fls_reference": "python/fls_reference"},
    install_requires=["torch>=2.4"],
    extras_require={"triton": ["triton>=3.0"], "demo": ["scikit-learn", "matplotlib", "tqdm"]},
    ext_modules=ext_modules,
    cmdclass=cmdclass,
)
