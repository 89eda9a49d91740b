"""The op table: every op of the contract declared once — its names, its shape of arguments and its outputs.

Everything that lists the ops reads them from here: ``backends.OPS``, ``ops.__all__`` (and with it the
package's exports), the reference backend's loader (``fls_reference.<name>``), the Triton loader (module
``backends/triton/<stem>.py``), the native launchers (internal op ``torch.ops.fls._<stem>``, outputs allocated
as ``output`` says) and the benchmark registry.

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


@dataclass(frozen=True)
class Op:
    """One op of the contract.

    Attributes:
        name: public name (``fls_kernels.<name>``, ``fls_reference.<name>``, the registry's op key).
        stem: name of its kernels: the Triton module ``backends/triton/<stem>.py``, the native op
            ``fls::_<stem>``.
        output: how its results are allocated.
        precision: whether it takes the keyword ``precision`` (one of :data:`PRECISIONS`).
        layer_op: for a grouped op (one list per argument, a layer per entry), the per-layer op it applies to
            every layer; None for a per-layer op.
    """

    name: str
    stem: str
    output: Output
    precision: bool = False
    layer_op: str | None = None

    @property
    def grouped(self) -> bool:
        """True when the op takes lists of layers."""
        return self.layer_op is not None


#: Every op, in documentation order.
TABLE: tuple[Op, ...] = (
    Op("kron_qv", "kron_qv", Output.LIKE_FIRST, precision=True),
    Op("kron_diag", "kron_diag", Output.LIKE_FIRST),
    Op("obs_scores", "obs_scores", Output.LIKE_FIRST),
    Op("select_smallest", "select_smallest", Output.MASKS_LIKE_EACH),
    Op("select_nm", "select_nm", Output.MASK_LIKE_FIRST),
    Op("surgeon_update_", "surgeon_update", Output.IN_PLACE, precision=True),
    Op("kron_qv_grouped", "kron_qv_grouped", Output.LIKE_FIRST, precision=True, layer_op="kron_qv"),
    Op(
        "surgeon_update_grouped_", "surgeon_update_grouped", Output.IN_PLACE, precision=True, layer_op="surgeon_update_"
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


__all__ = ["NAMES", "PRECISIONS", "TABLE", "Op", "Output", "get"]
