"""The main job: the demo runs end to end, and FLS beats magnitude by a wide margin on it."""

from __future__ import annotations

import statistics

import pytest

from fls_kernels import demo
from fls_kernels.__main__ import main


def test_demo_writes_table_csv_and_plot(tmp_path):
    config = demo.DemoConfig(
        sparsities=(0.5, 0.9), seeds=(0,), fit_steps=10, substeps=2, refine_steps=2, train_epochs=2
    )
    result = demo.run(config)
    paths = demo.write(result, tmp_path)
    assert [p.name for p in paths] == ["results.csv", "results.md", "accuracy.png"]
    assert all(p.stat().st_size > 0 for p in paths)
    assert "| 90% |" in demo.table(result)
    assert len(result.accuracy[("FLS", 0.9)]) == 1


def test_cli_info(capsys):
    assert main(["info"]) == 0
    out = capsys.readouterr().out
    assert "reference" in out and "torch" in out


@pytest.mark.slow
def test_fls_beats_magnitude_by_25_points_at_80_percent():
    """One-shot 80%, no fine-tuning, mean of 3 seeds (the demo's own budgets)."""
    result = demo.run(demo.DemoConfig(sparsities=(0.8,), seeds=(0, 1, 2)))
    fls = statistics.fmean(result.accuracy[("FLS", 0.8)])
    mag = statistics.fmean(result.accuracy[("magnitude", 0.8)])
    print(f"\n80%: FLS {result.accuracy[('FLS', 0.8)]} magnitude {result.accuracy[('magnitude', 0.8)]}")
    assert fls - mag >= 0.25, (fls, mag)
