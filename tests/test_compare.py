"""``python -m fls_kernels compare``: backends agree with the reference, and a wrong backend is flagged."""

from __future__ import annotations

import pytest
import torch

import fls_reference as ref
from fls_kernels import backends, compare
from tests.pruning.helpers import SmallNet, loader


def test_compare_reports_every_op_and_the_prune_step():
    if backends.get_backend("cpu").load() is not None:
        pytest.skip("the cpu extension is not built")
    op_rows, steps = compare.run(SmallNet(), loader(), fit_steps=3, only=["reference", "cpu"])
    assert [r.op for r in op_rows] == list(backends.OPS)
    skipped = {r.op for r in op_rows if r.error is None}
    assert skipped == {"kron_qv_grouped", "surgeon_update_grouped_"}, "the cpu backend has no grouped kernels"
    assert all(r.ok for r in op_rows if r.error is not None)
    assert {s.backend for s in steps} == {"reference", "cpu"}
    assert all(s.mask_agreement == 1.0 and s.weight_error < 1e-5 for s in steps)
    assert "| cpu | kron_qv |" in compare.format_report(op_rows, steps)


def test_a_wrong_backend_is_flagged(monkeypatch):
    def wrong_kron_qv(V, A, G_R, G_L, *, precision="fp32"):
        return ref.kron_qv(V, A, G_R, G_L) * 1.001

    def wrong_grouped(*args, precision="fp32"):  # the last layer's update skipped
        Ws = args[0]
        ref.surgeon_update_grouped_([W for W in Ws[:-1]], *(a[:-1] for a in args[1:]))
        return Ws

    kernels = dict(
        backends.get_backend("reference").kernels, kron_qv=wrong_kron_qv, surgeon_update_grouped_=wrong_grouped
    )
    fake = backends.Backend("wrong", -1, ("cpu",), (torch.float32, torch.float64), lambda: kernels)
    monkeypatch.setitem(backends._REGISTRY, "wrong", fake)
    op_rows, _ = compare.run(SmallNet(), loader(), fit_steps=3, only=["reference", "wrong"])
    by_op = {r.op: r for r in op_rows}
    assert not by_op["kron_qv"].ok and by_op["kron_qv"].error == pytest.approx(1e-3, rel=1e-2)
    assert by_op["obs_scores"].ok and by_op["kron_qv_grouped"].ok and by_op["select_nm"].ok
    assert not by_op["surgeon_update_grouped_"].ok, "every layer of a grouped op is compared"


def test_cli_compare_exit_status(capsys):
    from fls_kernels.__main__ import main

    assert main(["compare", "--model", "tests.test_compare:tiny", "--backends", "reference", "--fit-steps", "2"]) == 0
    assert "prune step ms" in capsys.readouterr().out


def tiny(device: str):
    return SmallNet().to(device), loader()


@pytest.mark.parametrize(
    ("kwargs", "says"),
    [
        (dict(only=["reference", "nosuch"]), "unknown backend 'nosuch'"),
        (dict(sparsity=1.5), "sparsity"),
        (dict(fit_steps=-1), "fit_steps"),
    ],
)
def test_run_refuses_bad_arguments_before_fitting(monkeypatch, kwargs, says):
    def fit(*args, **kw):
        raise AssertionError("fitted before the arguments were checked")

    monkeypatch.setattr(compare.FishLegPruner, "fit", fit)
    with pytest.raises(ValueError, match=says):
        compare.run(SmallNet(), loader(), **kwargs)
