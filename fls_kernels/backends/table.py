"""The op table: every op of the contract declared once — its names, its arguments and its outputs.

Everything that lists the ops or builds their arguments reads them from here: ``backends.OPS``, ``ops.__all__``
(and with it the package's exports), the public wrappers' checks and custom-op schemas (:mod:`fls_kernels.ops`),
the reference backend's loader (``fls_reference.<name>``), the Triton loader (module
``backends/triton/<stem>.py``), the native launchers (internal op ``torch.ops.fls._<stem>``, outputs allocated
as ``output`` says), the argument binding of example problems (:mod:`fls_kernels.problems`), and through it the
``compare`` command, the benchmark registry and the op tests.

It lives in ``fls_kernels.backends``, the lowest floor of the package, and imports nothing (not even torch), so
every floor above — the backends while their package is still being imported, ``ops``, the package root, the
benchmarks — may read it without an import cycle and without a new rule in the layer contract.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

#: GEMM modes of ``precision=`` (accumulation is always fp32).
PRECISIONS = ("fp32", "tf32", "bf16")


class Output(enum.Enum):
    """How an op's results are allocated, relative to its first argument."""

    #: one new tensor with the first argument's shape, dtype and device (a grouped op: one per layer).
    LIKE_FIRST = "like first"
    #: one new bool tensor with the first argument's shape and device.
    MASK_LIKE_FIRST = "bool mask like first"
    #: a list of new bool tensors, one like each tensor of the first argument (a list).
    MASKS_LIKE_EACH = "bool masks like each of first"
    #: none: the first argument (a grouped op: each of its layers) is updated in place and returned.
    IN_PLACE = "in place on first"


#: What an argument is, relative to the first argument's [m, n] (its dtype and device rule the others).
KINDS: dict[str, str] = {
    "matrix": "[m, n] floating: the first argument; m, n, the dtype and the device are its",
    "mn": "[m, n] floating",
    "mm": "[m, m] floating",
    "nn": "[n, n] floating",
    "m": "[m] floating",
    "n": "[n] floating",
    "mask": "[m, n] bool",
    "scores": "a non-empty list of floating tensors of any shapes, one dtype: the first argument",
    "count": "an int ≥ 0",
    "int": "an int",
}


@dataclass(frozen=True)
class Arg:
    """One positional argument of an op.

    Attributes:
        name: its public name, which errors name (a grouped op's list: the plural, ``Vs``).
        kind: what it is (a key of :data:`KINDS`); a grouped op's argument is a list, one per layer.
        key: the entry of a layer problem (:func:`fls_kernels.problems.bind`) it is bound from.
    """

    name: str
    kind: str
    key: str

    @property
    def tensor(self) -> bool:
        """True for a tensor (or a list of tensors) rather than an int."""
        return self.kind not in ("count", "int")


@dataclass(frozen=True)
class Op:
    """One op of the contract.

    Attributes:
        name: public name (``fls_kernels.<name>``, ``fls_reference.<name>``, the registry's op key).
        stem: name of its kernels: the Triton module ``backends/triton/<stem>.py``, the native op
            ``fls::_<stem>``.
        output: how its results are allocated.
        args: its positional arguments, in order (``precision`` and ``backend`` are keywords).
        precision: whether it takes the keyword ``precision`` (one of :data:`PRECISIONS`).
        layer_op: for a grouped op (one list per argument, a layer per entry), the per-layer op it applies to
            every layer; None for a per-layer op.
        example: the layers [m, n] of its small example problem (one for a per-layer op).
    """

    name: str
    stem: str
    output: Output
    args: tuple[Arg, ...]
    precision: bool = False
    layer_op: str | None = None
    example: tuple[tuple[int, int], ...] = ((5, 8),)

    @property
    def grouped(self) -> bool:
        """True when the op takes lists of layers."""
        return self.layer_op is not None

    @property
    def schema(self) -> str:
        """The ``torch.library`` schema of its custom op ``fls::<name>``: the arguments, then ``precision`` where
        it takes it, and the chosen ``backend``; an in-place op mutates its first argument and returns nothing."""
        params = []
        for i, arg in enumerate(self.args):
            kind = "int" if not arg.tensor else "Tensor[]" if self.grouped or arg.kind == "scores" else "Tensor"
            params.append(f"{kind.replace('Tensor', 'Tensor(a!)') if i == 0 and self.mutates else kind} {arg.name}")
        params += ["str precision"] * self.precision + ["str backend"]
        many = self.grouped or self.output is Output.MASKS_LIKE_EACH
        returns = "()" if self.mutates else "Tensor[]" if many else "Tensor"
        return f"({', '.join(params)}) -> {returns}"

    @property
    def masks(self) -> bool:
        """True when its results are bool masks (compared exactly, not within a tolerance)."""
        return self.output in (Output.MASK_LIKE_FIRST, Output.MASKS_LIKE_EACH)

    @property
    def mutates(self) -> bool:
        """True when it updates its first argument in place."""
        return self.output is Output.IN_PLACE


def _each(args: tuple[Arg, ...]) -> tuple[Arg, ...]:
    """A per-layer op's arguments as a grouped op's lists (``V`` → ``Vs``)."""
    return tuple(Arg(f"{a.name}s", a.kind, a.key) for a in args)


_QV = (Arg("V", "matrix", "W"), Arg("A", "mn", "A"), Arg("G_R", "mm", "G_R"), Arg("G_L", "nn", "G_L"))
_FACTORS = (Arg("r", "m", "r"), Arg("l", "n", "l"))
_SURGEON = (
    Arg("W", "matrix", "W"),
    *_QV[1:],
    *_FACTORS,
    Arg("prune", "mask", "prune"),
    Arg("keep", "mask", "keep"),
)
_GROUP_EXAMPLE = ((5, 8), (3, 4), (1, 6))

#: Every op, in documentation order.
TABLE: tuple[Op, ...] = (
    Op("kron_qv", "kron_qv", Output.LIKE_FIRST, _QV, precision=True),
    Op("kron_diag", "kron_diag", Output.LIKE_FIRST, (Arg("A", "matrix", "A"), *_FACTORS)),
    Op(
        "obs_scores",
        "obs_scores",
        Output.LIKE_FIRST,
        (Arg("W", "matrix", "W"), Arg("A", "mn", "A"), *_FACTORS, Arg("mask", "mask", "alive")),
    ),
    Op(
        "select_smallest",
        "select_smallest",
        Output.MASKS_LIKE_EACH,
        (Arg("scores", "scores", "score_list"), Arg("k", "count", "k")),
    ),
    Op(
        "select_nm",
        "select_nm",
        Output.MASK_LIKE_FIRST,
        (Arg("scores", "matrix", "nm_scores"), Arg("n", "int", "nm_n"), Arg("m", "int", "nm_m")),
    ),
    Op("surgeon_update_", "surgeon_update", Output.IN_PLACE, _SURGEON, precision=True),
    Op(
        "kron_qv_grouped",
        "kron_qv_grouped",
        Output.LIKE_FIRST,
        _each(_QV),
        precision=True,
        layer_op="kron_qv",
        example=_GROUP_EXAMPLE,
    ),
    Op(
        "surgeon_update_grouped_",
        "surgeon_update_grouped",
        Output.IN_PLACE,
        _each(_SURGEON),
        precision=True,
        layer_op="surgeon_update_",
        example=_GROUP_EXAMPLE,
    ),
)

#: The public names, in documentation order.
NAMES: tuple[str, ...] = tuple(op.name for op in TABLE)

_BY_NAME = {op.name: op for op in TABLE}


def get(name: str) -> Op:
    """The op called ``name``; KeyError listing the known names otherwise."""
    try:
        return _BY_NAME[name]
    except KeyError:
        raise KeyError(f"unknown op {name!r}; known: {', '.join(NAMES)}") from None


__all__ = ["KINDS", "NAMES", "PRECISIONS", "TABLE", "Arg", "Op", "Output", "get"]
