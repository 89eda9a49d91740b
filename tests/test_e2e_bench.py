"""The end-to-end benchmark on the CPU: the aux-step split adds up, its parts are timed alone, the one-shot prune is
split by section, and both tables are written (CSV rows tell them apart)."""

from __future__ import annotations

import csv

import pytest
import torch

from benchmarks import end_to_end, models
from benchmarks.__main__ import main
from fls_kernels.curvature import AuxFitter, KronBlock


@pytest.fixture(scope="module")
def digits() -> models.Model:
    return models.build("digits", "cpu", batch=64)


def test_aux_step_table_on_digits_with_3_steps(digits, tmp_path):
    settings = end_to_end.Settings(fit_steps=3, aux_steps=3, substeps=2)
    seen = []
    result = end_to_end.run(digits, "cpu", ["reference", "nonexistent"], settings, log=str, checkpoint=seen.append)
    assert len(seen) == 2  # after every backend
    (aux_row, missing), (prune_row, _) = result.aux, result.prune
    assert missing.provider == "nonexistent" and missing.ms is None and missing.note
    aux, prune = aux_row.values, prune_row.values
    assert aux_row.ms == aux["step_ms"] and prune_row.ms == pytest.approx(1e3 * prune["total"])
    assert aux["step_ms"] == pytest.approx(aux["fvp_ms"] + aux["q_ms"] + aux["other_ms"])
    assert aux["fvp_ms"] > 0 and aux["q_ms"] > 0 and aux["q_alone_ms"] > 0 and aux["fwd_bwd_ms"] > 0
    assert aux["step_over_parts"] == pytest.approx(aux["step_ms"] / (aux["fvp_alone_ms"] + aux["q_alone_ms"]))
    assert aux["fvp_over_fwd_bwd"] == pytest.approx(aux["fvp_alone_ms"] / aux["fwd_bwd_ms"])
    assert aux["peak_step_mib"] is None and prune["peak_mib"] is None  # CUDA only
    sections = sum(prune.get(k, 0.0) for k in end_to_end.SECTIONS)
    assert prune["total"] == pytest.approx(sections + prune["other"]) and prune["fvp"] > 0

    csv_path, md_path = end_to_end.write(result, tmp_path, "cpu")
    table = md_path.read_text()
    assert "| backend | aux step | fvp | q_products | other | FVP alone | Q alone | step / (FVP + Q) |" in table
    assert "| reference | " in table and "| nonexistent | not run:" in table and "FVP ≤ 2.5 × fwd+bwd" in table
    assert "per-step split over 3 aux steps" in table and "—" in table.splitlines()[-2]  # peak MiB on the CPU
    rows = list(csv.DictReader(open(csv_path)))
    assert [(r["table"], r["backend"]) for r in rows] == [
        ("prune", "reference"), ("prune", "nonexistent"), ("aux", "reference"), ("aux", "nonexistent")
    ]  # fmt: skip
    assert float(rows[2]["step_ms"]) == pytest.approx(aux["step_ms"]) and rows[0]["commit"]


def test_q_products_reach_every_lambda():
    blocks = [KronBlock(4, 7), KronBlock(3, 5), KronBlock(2, 11)]  # the last one through its factors
    for b in blocks:
        b.init_identity(0.7)
    fitter = AuxFitter(blocks, lambda batch, vs: vs, 1e-2, generator=torch.Generator().manual_seed(0))
    before = [p.detach().clone() for p in fitter.params]
    end_to_end.q_products(fitter)()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for b in blocks for p in b.parameters())
    assert all(torch.equal(p, q) for p, q in zip(fitter.params, before))  # λ itself does not move


def test_defaults_are_cpu_sized_and_study_sized_on_cuda():
    cpu, heavy, gpu = (
        end_to_end.Settings.defaults(m, d) for m, d in [("digits", "cpu"), ("resnet18", "cpu"), ("minilm", "cuda")]
    )
    assert heavy.fit_steps < cpu.fit_steps < gpu.fit_steps == 2000 and gpu.substeps == 16
    assert cpu.override(fit_steps=None, aux_steps=7).aux_steps == 7 and cpu.override(fit_steps=None) == cpu
    assert heavy.refine_steps == 1 and gpu.refine_steps == 200


def test_the_compiled_lambda_side_reaches_the_pruner(digits):
    settings = end_to_end.Settings(2, 2, 1).override(aux_compile="default")
    assert "λ side compiled ('default')" in settings.describe()
    assert end_to_end.pruner(digits, "reference", settings).method.aux_compile == "default"
    assert end_to_end.pruner(digits, "reference", end_to_end.Settings(2, 2, 1)).method.aux_compile is None


def test_the_command_writes_both_tables(tmp_path):
    argv = ["e2e", "--model", "digits", "--backends", "reference", "--fit-steps", "2", "--aux-steps", "2"]
    assert main([*argv, "--substeps", "1", "--batch", "128", "--out", str(tmp_path)]) == 0
    table = (tmp_path / "e2e-digits-cpu.md").read_text()
    assert "One-shot FLS prune" in table and "One aux step" in table and "fit 2 aux steps" in table
