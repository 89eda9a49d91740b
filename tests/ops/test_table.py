"""The op table is the one list of ops: the package, the registry, every backend and the oracle agree with it;
and the backends' one allocation function, which the tests poison."""

from __future__ import annotations

import inspect
import os

import pytest
import torch

import fls_kernels as fls
import fls_reference as ref
from fls_kernels import backends, ops
from fls_kernels.backends import alloc, table
from fls_kernels.testing import example, poison_enabled, poison_outputs, poisoned_empty

OPS = [pytest.param(op, id=op.name) for op in table.TABLE]


def test_registry_and_ops_list_exactly_the_table():
    assert backends.OPS == table.NAMES
    assert ops.__all__ == list(table.NAMES)
    assert ops.PRECISIONS == table.PRECISIONS == ("fp32", "tf32", "bf16")
    assert sorted(ref.__all__) == sorted(table.NAMES)
    assert len(set(table.NAMES)) == len(table.NAMES)


@pytest.mark.parametrize("op", OPS)
def test_every_op_exists_in_the_reference_the_package_and_torch_ops(op):
    assert callable(getattr(ref, op.name))
    assert op.name in fls.__all__ and getattr(fls, op.name) is getattr(ops, op.name)
    assert isinstance(getattr(torch.ops.fls, op.name), torch._ops.OpOverloadPacket)
    assert backends.get_backend("reference").kernels[op.name] is getattr(ref, op.name)


@pytest.mark.parametrize("op", OPS)
def test_entries_are_consistent(op):
    assert table.get(op.name) is op
    assert op.grouped == op.name.removesuffix("_").endswith("_grouped")
    if op.grouped:
        layer = table.get(op.layer_op)
        assert not layer.grouped and op.stem == f"{layer.stem}_grouped"
        assert (op.output, op.precision) == (layer.output, layer.precision)
    assert (op.output is table.Output.IN_PLACE) == op.name.endswith("_")
    assert op.masks == (op.output in (table.Output.MASK_LIKE_FIRST, table.Output.MASKS_LIKE_EACH))


@pytest.mark.parametrize("op", OPS)
def test_signature_schema_and_example_come_from_the_entry(op):
    """The public function's positional parameters, the custom op's schema and the example problem's arguments are
    the entry's: one declaration of each op's arguments."""
    positional = [
        p.name
        for p in inspect.signature(getattr(fls, op.name)).parameters.values()
        if p.kind is p.POSITIONAL_OR_KEYWORD
    ]
    assert positional == [a.name for a in op.args]
    assert str(getattr(torch.ops.fls, op.name).default._schema) == f"fls::{op.name}{op.schema}"
    assert all(a.kind in table.KINDS for a in op.args) and op.args[0].kind in ("matrix", "scores")
    args = example(op)
    assert len(args) == len(op.args) and len(op.example) == (len(args[0]) if op.grouped else 1)
    if op.grouped:
        layer = table.get(op.layer_op)
        assert [(a.name, a.kind, a.key) for a in op.args] == [(f"{a.name}s", a.kind, a.key) for a in layer.args]


def test_unknown_op_names_the_known_ones():
    with pytest.raises(KeyError, match="known: kron_qv"):
        table.get("kron_pv")


def test_triton_implements_every_op_with_a_module():
    why = backends.get_backend("triton").load()
    if why is not None:
        pytest.skip(f"triton {why}")
    assert set(backends.get_backend("triton").kernels) == set(table.NAMES) - {"select_smallest"}


def test_native_backends_have_the_ops_the_dispatcher_has():
    if backends.get_backend("cpu").load() is not None:
        pytest.skip("fls_kernels._C is not built")
    native = [op for op in table.TABLE if not op.grouped]
    for op in native:
        assert torch._C._dispatch_has_kernel_for_dispatch_key(f"fls::_{op.stem}", "CPU"), op.stem
    assert set(backends.get_backend("cpu").kernels) == {op.name for op in native}


# ---------------------------------------------------------------------------------------------- allocation
def test_the_suite_poisons_outputs_unless_told_not_to():
    assert poison_enabled() == (os.environ.get("FLS_POISON", "1") == "1"), "tests/conftest.py installs it"


def test_allocator_swaps_and_restores():
    with alloc.allocator(torch.empty):
        assert alloc.get_allocator() is torch.empty and not poison_enabled()
        with poison_outputs():
            assert poison_enabled()
            f = alloc.empty((2, 3), dtype=torch.float32, device="cpu")
            b = alloc.empty((4,), dtype=torch.bool, device="cpu")
            i = alloc.empty((1,), dtype=torch.int64, device="cpu")
        assert alloc.get_allocator() is torch.empty
    assert torch.isnan(f).all() and b.all() and i.item() == -1
    assert (f.shape, f.dtype, b.dtype) == ((2, 3), torch.float32, torch.bool)


def test_backend_outputs_come_from_the_allocator():
    calls = []

    def counting(shape, *, dtype, device):
        calls.append((tuple(shape), dtype))
        return poisoned_empty(shape, dtype=dtype, device=device)

    A = torch.rand(3, 4)
    names = [b.name for b in backends.backends() if b.name != "reference" and b.reason("kron_diag") is None]
    if not names:
        pytest.skip("neither the extension nor triton is available")
    with alloc.allocator(counting):
        for name in names:
            out = backends.kernel(name, "kron_diag")(A, torch.ones(3), torch.ones(4))
            assert not torch.isnan(out).any(), name
    assert calls == [((3, 4), torch.float32)] * len(names)
