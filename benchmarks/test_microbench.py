"""pytest-benchmark micro-benchmarks over the same registry as ``python -m benchmarks kernels``.

    python -m pytest benchmarks/test_microbench.py --benchmark-only [--benchmark-json out.json]

Each case is verified against the float64 reference before it is timed (CUDA when present, else the CPU shapes).
"""

from __future__ import annotations

import pytest
import torch

from benchmarks import registry, runner

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
SHAPES = registry.SHAPES if DEVICE == "cuda" else registry.CPU_SHAPES
CASES = [
    pytest.param(case, provider, id=f"{case.op}-{case.shape.split()[0]}-{provider}")
    for op in registry.OPS
    for case in registry.cases(op, SHAPES, [], "fp32")
    for provider in registry.PROVIDERS
    if provider not in registry.YARDSTICKS  # timed beside the ops by the runner, not an implementation to verify
]


@pytest.mark.parametrize("case,provider", CASES)
def test_op(benchmark, case, provider):
    why = registry.unavailable(case.op, provider, DEVICE)
    if why is not None:
        pytest.skip(f"{provider}: {why}")
    runner.verify(case, provider, DEVICE)
    inputs = registry.make_inputs(case, DEVICE)
    fn = registry.provider_call(case.op, provider, False)
    sync = torch.cuda.synchronize if DEVICE == "cuda" else (lambda: None)

    def call():
        fn(inputs, "fp32")
        sync()

    benchmark(call)
