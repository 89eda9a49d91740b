"""The digits study's bookkeeping: merging runs over disjoint (seed, method) pairs, and the FLS variants."""

from __future__ import annotations

import csv

import pytest

from benchmarks.quality import digits


def write_run(path, rows):
    path.mkdir()
    with open(path / "quality.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=["seed", "method", "mode", "sparsity", "damping", "accuracy"])
        w.writeheader()
        w.writerows(rows)


def row(seed, method, mode, sparsity, accuracy, damping=""):
    return dict(seed=seed, method=method, mode=mode, sparsity=sparsity, damping=damping, accuracy=accuracy)


def test_merge_takes_methods_from_several_runs_of_the_same_seeds(tmp_path):
    dense = [row(0, "dense", "dense", 0.0, 0.98), row(1, "dense", "dense", 0.0, 0.97)]
    write_run(tmp_path / "a", dense + [row(s, "oBERT", "one-shot", 0.8, 0.96, 0.1) for s in (0, 1)])
    write_run(tmp_path / "b", dense + [row(s, "FLS-diagonal", "one-shot", 0.8, 0.95, 1.0) for s in (0, 1)])
    results = digits.merge([tmp_path / "a", tmp_path / "b"], digits.Protocol())
    assert results.protocol.methods == ("FLS-diagonal", "oBERT") and results.protocol.seeds == (0, 1)
    assert sum(r["mode"] == "dense" for r in results.rows) == 2
    text = digits.table(results)
    assert "| one-shot | 80% | 0.950 ± 0.000 | 0.960 ± 0.000 |" in text
    write_run(tmp_path / "c", dense + [row(0, "oBERT", "gradual", 0.95, 0.9)])
    with pytest.raises(ValueError, match="more than one run"):
        digits.merge([tmp_path / "a", tmp_path / "c"], digits.Protocol())
    write_run(tmp_path / "d", [row(0, "dense", "dense", 0.0, 0.5), row(0, "Wanda", "one-shot", 0.8, 0.3)])
    with pytest.raises(ValueError, match="dense model differs"):
        digits.merge([tmp_path / "a", tmp_path / "d"], digits.Protocol())


@pytest.mark.parametrize(
    ("method", "update", "init"), [("FLS", "adaptive", "kfac"), ("FLS-diagonal", "diagonal", "diagonal")]
)
def test_fls_variants(method, update, init):
    from fls_kernels import demo

    pruner = digits.make(method, demo.DigitsCNN(), 1.0, digits.Protocol(), 0)
    assert (pruner.method.update_rule, pruner.method.init) == (update, init)
    assert method in digits.CURVATURE and method in digits.METHODS


def test_a_run_uses_the_protocols_thread_count_and_restores_the_callers(monkeypatch):
    import torch

    seen = []
    monkeypatch.setattr(digits, "_run", lambda protocol, log: seen.append(torch.get_num_threads()) or "done")
    before = torch.get_num_threads()
    want = 2 if before == 1 else 1
    assert digits.run(digits.Protocol(threads=want)) == "done"
    assert seen == [want] and torch.get_num_threads() == before
