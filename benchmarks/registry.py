"""What is benchmarked: ops × providers × layer shapes from real models, with a FLOP/byte model per op.

Providers: ``reference`` (fls_reference, eager), ``reference+compile`` (the same under torch.compile) and
every fls_kernels backend by name (``cpu``, ``cuda``, ``triton``), called through the public ops.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

import fls_kernels as fls
import fls_reference as ref
from fls_kernels.testing import cast, random_problem

#: (name, m, n): weight matrices of real layers.
SHAPES: list[tuple[str, int, int]] = [
    ("bert-attn 768x768", 768, 768),
    ("bert-ffn-in 3072x768", 3072, 768),
    ("bert-ffn-out 768x3072", 768, 3072),
    ("resnet50-conv 512x4608", 512, 4608),
    ("square 4096x4096", 4096, 4096),
    ("llama-mlp 11008x4096", 11008, 4096),
]
#: Shapes small enough for the 2-core CPU suite.
CPU_SHAPES = [s for s in SHAPES if s[1] * s[2] <= 3072 * 768]

PROVIDERS = ("reference", "reference+compile", "cpu", "cuda", "triton")
OPS = ("kron_qv", "obs_scores", "surgeon_update_", "select_smallest")


@dataclass
class Case:
    op: str
    shape: str
    m: int
    n: int
    precision: str = "fp32"

    def flops(self) -> float:
        if self.op in ("kron_qv", "surgeon_update_"):
            return 2.0 * self.m * self.n * (self.m + self.n)  # G_R·X (2m²n) and X·G_L (2mn²)
        return 4.0 * self.m * self.n

    def bytes(self) -> float:
        mn, f = self.m * self.n, 4
        return {
            "kron_qv": f * (3 * mn + self.m**2 + self.n**2),
            "obs_scores": f * (3 * mn + self.m + self.n) + mn,
            "surgeon_update_": f * (3 * mn + self.m**2 + self.n**2 + self.m + self.n) + 2 * mn,
            "select_smallest": f * mn + mn,
        }[self.op]


def make_inputs(case: Case, device: str, dtype: torch.dtype = torch.float32, seed: int = 0) -> dict:
    """Random, well-conditioned inputs of the op (10% of the alive weights pruned)."""
    return cast(random_problem(case.m, case.n, seed=seed, prune_fraction=0.1), dtype, device)


def _reference_call(op: str) -> Callable[[dict, str], object]:
    return {
        "kron_qv": lambda t, p: ref.kron_qv(t["W"], t["A"], t["G_R"], t["G_L"], precision=p),
        "obs_scores": lambda t, p: ref.obs_scores(t["W"], t["A"], t["r"], t["l"], t["alive"]),
        "surgeon_update_": lambda t, p: ref.surgeon_update_(
            t["W"], t["A"], t["G_R"], t["G_L"], t["r"], t["l"], t["prune"], t["keep"], precision=p
        ),
        "select_smallest": lambda t, p: ref.select_smallest([t["W"]], t["W"].numel() // 2),
    }[op]


def _backend_call(op: str, backend: str) -> Callable[[dict, str], object]:
    return {
        "kron_qv": lambda t, p: fls.kron_qv(t["W"], t["A"], t["G_R"], t["G_L"], precision=p, backend=backend),
        "obs_scores": lambda t, p: fls.obs_scores(t["W"], t["A"], t["r"], t["l"], t["alive"], backend=backend),
        "surgeon_update_": lambda t, p: fls.surgeon_update_(
            t["W"], t["A"], t["G_R"], t["G_L"], t["r"], t["l"], t["prune"], t["keep"], precision=p, backend=backend
        ),
        "select_smallest": lambda t, p: fls.select_smallest([t["W"]], t["W"].numel() // 2, backend=backend),
    }[op]


def provider_call(op: str, provider: str) -> Callable[[dict, str], object]:
    """A callable (inputs, precision) → output of ``op`` on ``provider``."""
    if provider == "reference":
        return _reference_call(op)
    if provider == "reference+compile":
        return torch.compile(_reference_call(op), dynamic=False)
    return _backend_call(op, provider)


def unavailable(op: str, provider: str, device: str) -> str | None:
    """Why ``provider`` cannot run ``op`` on ``device`` (None when it can)."""
    if provider.startswith("reference"):
        return None
    return fls.backends.get_backend(provider).reason(op, torch.device(device), torch.float32)
