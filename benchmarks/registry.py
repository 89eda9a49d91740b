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
from fls_kernels.backends import table
from fls_kernels.testing import bind, cast, random_problem

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

_BERT_BLOCK = [(768, 768)] * 4 + [(3072, 768), (768, 3072)]  # Q, K, V, attention output; FFN in, FFN out
#: (name, [(m, n) per layer]): whole-model prune steps. The grouped ops take the list in one call; the
#: per-layer ops (kron_qv, surgeon_update_) run it as a loop of single-layer calls, for comparison.
GROUPS: dict[str, list[tuple[int, int]]] = {
    "bert-base 72 layers": _BERT_BLOCK * 12,
}

#: Providers that time a yardstick beside the op rather than the op itself (never verified): ``gemms`` runs the
#: two GEMMs a Kronecker product needs, G_R · (X · G_L), as ``torch.mm`` in the case's precision mode (bf16:
#: operands cast beforehand) — the cuBLAS time the fused kernels are measured against.
YARDSTICKS = ("gemms",)
PROVIDERS = ("reference", "reference+compile", "cpu", "cuda", "triton", *YARDSTICKS)
#: Ops whose work is those two GEMMs (per layer), for which ``gemms`` is timed.
GEMM_OPS = ("kron_qv", "surgeon_update_", "kron_qv_grouped", "surgeon_update_grouped_")


#: The benchmarked per-layer ops — every op of the table with its grouped form, but ``select_smallest``, whose one
#: front-end is ``python -m benchmarks select`` (global selection over N scores against torch's) —, their arguments
#: bound from the inputs of ``make_inputs`` by the op table (:func:`fls_kernels.backends.problems.bind`), for the
#: reference and every backend alike (``precision`` is added for the ops that take it).
LAYER_OPS = tuple(op.name for op in table.TABLE if not op.grouped and op.name != "select_smallest")
#: The benchmarked ops, in the op table's order.
OPS = tuple(op.name for op in table.TABLE if (op.layer_op or op.name) in LAYER_OPS)
#: Ops that take lists of layers (only run on GROUPS); ops that can also run a group as a per-layer loop.
GROUPED_OPS = tuple(op.name for op in table.TABLE if op.grouped and op.name in OPS)
LOOPED_OPS = tuple(op.layer_op for op in table.TABLE if op.grouped and op.name in OPS)


@dataclass
class Case:
    """One op on one layer (m, n) or, when ``layers`` is set, on a list of layers (m, n are then the largest)."""

    op: str
    shape: str
    m: int
    n: int
    precision: str = "fp32"
    layers: tuple[tuple[int, int], ...] | None = None

    @classmethod
    def group(cls, op: str, name: str, precision: str = "fp32") -> Case:
        layers = tuple(GROUPS[name])
        return cls(op, name, max(m for m, _ in layers), max(n for _, n in layers), precision, layers)

    def _each(self) -> list[tuple[int, int]]:
        return list(self.layers) if self.layers is not None else [(self.m, self.n)]

    def flops(self) -> float:
        if self.op.rstrip("_").removesuffix("_grouped") in ("kron_qv", "surgeon_update"):
            return sum(2.0 * m * n * (m + n) for m, n in self._each())  # G_R·X (2m²n) and X·G_L (2mn²)
        return sum(4.0 * m * n for m, n in self._each())

    def bytes(self) -> float:
        op, f, total = self.op.rstrip("_").removesuffix("_grouped"), 4, 0
        for m, n in self._each():
            mn = m * n
            total += {
                "kron_qv": f * (3 * mn + m**2 + n**2),
                "kron_diag": f * (2 * mn + m + n),
                "obs_scores": f * (3 * mn + m + n) + mn,
                "select_nm": f * mn + mn,
                "surgeon_update": f * (3 * mn + m**2 + n**2 + m + n) + 2 * mn,
            }[op]
        return total


def make_inputs(case: Case, device: str, dtype: torch.dtype = torch.float32, seed: int = 0) -> dict:
    """Random, well-conditioned inputs of the op (10% of the alive weights pruned; a single layer's selection scores:
    W's values).

    For a group, a dict of lists, one entry per layer: layers of one shape share their random values but
    not their storage (each is its own tensor, as in a model).
    """
    if case.layers is None:
        inputs = cast(random_problem(case.m, case.n, seed=seed, prune_fraction=0.1), dtype, device)
        return dict(inputs, scores=inputs["W"])
    base = {shape: cast(random_problem(*shape, seed=seed, prune_fraction=0.1), dtype, device) for shape in case._each()}
    layers = [{k: v.clone() for k, v in base[shape].items()} for shape in case._each()]
    return {k: [layer[k] for layer in layers] for k in layers[0]}


def _looped(call: Callable[[dict, str], object]) -> Callable[[dict, str], object]:
    """A single-layer call run over every layer of a group's inputs (a dict of lists)."""

    def run(t: dict, p: str) -> list:
        return [call({k: v[i] for k, v in t.items()}, p) for i in range(len(t["W"]))]

    return run


def _call(op: str, fn: Callable, **fixed) -> Callable[[dict, str], object]:
    """(inputs, precision) → ``fn`` (the reference's or the public op ``op``) on ``op``'s arguments."""
    spec = table.get(op)

    def call(t: dict, p: str):
        return fn(*bind(spec, t, fresh=False), **fixed, **({"precision": p} if spec.precision else {}))

    return call


def _gemms(t: dict, p: str) -> list[torch.Tensor]:
    """G_R · (W · G_L) per layer of the inputs (a dict of tensors or of lists) in precision mode ``p``."""
    from benchmarks.peaks import matmul_mode

    layers = zip(*(t[k] if isinstance(t[k], list) else [t[k]] for k in ("W", "G_R", "G_L")))
    with matmul_mode(p):
        return [G_R @ (W @ G_L) for W, G_R, G_L in layers]


def _bf16_once(call: Callable[[dict, str], object]) -> Callable[[dict, str], object]:
    """``call`` on inputs whose float tensors are cast to bf16 once (the cast is not part of the GEMMs' time)."""
    cache: dict[int, dict] = {}

    def cast_once(t: dict) -> dict:
        if id(t) not in cache:
            to = lambda x: x.to(torch.bfloat16) if x.is_floating_point() else x  # noqa: E731
            cache[id(t)] = {k: [to(x) for x in v] if isinstance(v, list) else to(v) for k, v in t.items()}
        return cache[id(t)]

    return lambda t, p: call(cast_once(t), p) if p == "bf16" else call(t, p)


def provider_call(op: str, provider: str, grouped_inputs: bool = False) -> Callable[[dict, str], object]:
    """A callable (inputs, precision) → output of ``op`` on ``provider``; with ``grouped_inputs`` a per-layer
    op runs as a loop over the layers of a group. The yardstick ``gemms`` returns its products instead."""
    if provider == "gemms":
        return _bf16_once(_gemms)
    if provider == "reference":
        call = _call(op, getattr(ref, op))
    elif provider == "reference+compile":
        call = _call(op, getattr(ref, op))
        if grouped_inputs and op not in GROUPED_OPS:
            call = _looped(call)
        return torch.compile(call, dynamic=False)
    else:
        call = _call(op, getattr(fls, op), backend=provider)
    return _looped(call) if grouped_inputs and op not in GROUPED_OPS else call


def cases(op: str, shapes: list[tuple[str, int, int]], groups: list[str], precision: str) -> list[Case]:
    """The cases of ``op``: its shapes (not for grouped ops) and, for grouped and looped ops, the groups."""
    single = [] if op in GROUPED_OPS else [Case(op, name, m, n, precision) for name, m, n in shapes]
    grouped = [Case.group(op, name, precision) for name in groups] if op in GROUPED_OPS + LOOPED_OPS else []
    return single + grouped


def unavailable(op: str, provider: str, device: str) -> str | None:
    """Why ``provider`` cannot run ``op`` on ``device`` (None when it can)."""
    if provider.startswith("reference"):
        return None
    if provider == "gemms":
        return None if op in GEMM_OPS else "no GEMMs to compare with"
    return fls.backends.get_backend(provider).reason(op, torch.device(device), torch.float32)
