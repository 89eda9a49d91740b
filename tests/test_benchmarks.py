"""The benchmark registry and runner: a whole-model group runs through verify, timing and the tables."""

from __future__ import annotations

import pytest
import torch

from benchmarks import registry, runner
from tests.conftest import backend_or_skip


def test_bert_base_group_is_72_layers():
    case = registry.Case.group("surgeon_update_grouped_", "bert-base 72 layers", "tf32")
    assert len(case.layers) == 72 and (case.m, case.n) == (3072, 3072)
    assert case.flops() == 12 * (4 * 2 * 768**3 * 2 + 2 * 2 * 3072 * 768 * (3072 + 768))


@pytest.mark.triton
def test_grouped_cases_verify_time_and_tabulate(monkeypatch, tmp_path):
    backend_or_skip("triton", "surgeon_update_grouped_", "cpu", torch.float32)
    monkeypatch.setitem(registry.GROUPS, "tiny", [(16, 32), (5, 17), (16, 32)])
    ops = ["kron_qv_grouped", "surgeon_update_grouped_", "surgeon_update_"]
    rows = runner.run(ops, ["reference", "triton"], [], "cpu", "fp32", ["tiny"])
    assert [(r.op, r.provider) for r in rows] == [(op, p) for op in ops for p in ("reference", "triton")]
    assert all(r.ms is not None and r.error <= 1e-5 for r in rows)
    csv_path, md_path = runner.write(rows, tmp_path, "cpu")
    assert csv_path.read_text().count("tiny") == len(rows)
    assert "| surgeon_update_grouped_ | tiny | triton |" in md_path.read_text()


@pytest.mark.parametrize(
    "corrupt,match",
    [
        (lambda out: out * (1 + 1e-3), "relative error"),
        (
            lambda out: out.masked_fill(
                torch.zeros_like(out, dtype=torch.bool).index_fill_(0, torch.tensor([0]), True), float("nan")
            ),
            "NaN",
        ),
    ],
    ids=["scaled", "nan"],
)
def test_verify_fails_on_a_wrong_provider(monkeypatch, corrupt, match):
    original = registry.provider_call

    def provider_call(op, provider, grouped_inputs=False):
        call = original(op, "reference" if provider == "bad" else provider, grouped_inputs)
        return (lambda t, p: corrupt(call(t, p))) if provider == "bad" else call

    monkeypatch.setattr(registry, "provider_call", provider_call)
    case = registry.Case("kron_qv", "tiny", 9, 13)
    assert runner.verify(case, "reference", "cpu") < 1e-6
    with pytest.raises(runner.VerifyError, match=match):
        runner.verify(case, "bad", "cpu")


def test_verify_fails_on_a_wrong_mask(monkeypatch):
    original = registry.provider_call

    def provider_call(op, provider, grouped_inputs=False):
        call = original(op, "reference" if provider == "bad" else provider, grouped_inputs)
        return (lambda t, p: [~m for m in call(t, p)]) if provider == "bad" else call

    monkeypatch.setattr(registry, "provider_call", provider_call)
    with pytest.raises(runner.VerifyError, match="mask entries differ"):
        runner.verify(registry.Case("select_smallest", "tiny", 7, 11), "bad", "cpu")
