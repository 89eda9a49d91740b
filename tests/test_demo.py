"""The main job: the demo runs end to end, and FLS beats magnitude by a wide margin on it."""

from __future__ import annotations

import statistics

import pytest

from fls_kernels import demo
from fls_kernels.__main__ import main


def test_demo_writes_table_csv_and_plot(tmp_path, caplog):
    config = demo.DemoConfig(
        sparsities=(0.5, 0.9), seeds=(0,), fit_steps=10, substeps=2, refine_steps=2, train_epochs=2
    )
    with caplog.at_level("INFO", logger="fls_kernels.demo"):
        result = demo.run(config)
    logged = caplog.text  # every stage is logged as it starts
    assert "seed 0 (1/1): training the CNN, 2 epochs" in logged
    assert "fitting Q, 10 aux steps" in logged and "pruning at 50%, 90%" in logged
    assert "seed 0 sparsity 0.90: FLS" in logged and "seed 0 done in" in logged
    paths = demo.write(result, tmp_path)
    assert [p.name for p in paths] == ["results.csv", "results.md", "accuracy.png"]
    assert all(p.stat().st_size > 0 for p in paths)
    assert "| 90% |" in demo.table(result)
    assert len(result.accuracy[("FLS", 0.9)]) == 1


def test_expected_time_of_the_default_demo_is_a_few_minutes():
    assert 60 <= demo.estimate_seconds(demo.DemoConfig()) <= 600
    small = demo.DemoConfig(seeds=(0,), fit_steps=10)
    assert demo.estimate_seconds(small) < demo.estimate_seconds(demo.DemoConfig()) / 3
    assert demo.format_seconds(42) == "42 s" and demo.format_seconds(150) == "2.5 min"


def test_cli_info(capsys):
    assert main(["info"]) == 0
    out = capsys.readouterr().out
    assert "reference" in out and "torch" in out


def test_fls_beats_magnitude_by_25_points_at_80_percent_on_one_seed():
    """CI-sized sibling of the 3-seed guard below: one-shot 80%, seed 0, the demo's own budgets."""
    result = demo.run(demo.DemoConfig(sparsities=(0.8,), seeds=(0,)))
    (fls,), (mag,) = result.accuracy[("FLS", 0.8)], result.accuracy[("magnitude", 0.8)]
    assert fls - mag >= 0.25, (fls, mag)


@pytest.mark.slow
def test_fls_beats_magnitude_by_25_points_at_80_percent():
    """One-shot 80%, no fine-tuning, mean of 3 seeds (the demo's own budgets)."""
    result = demo.run(demo.DemoConfig(sparsities=(0.8,), seeds=(0, 1, 2)))
    fls = statistics.fmean(result.accuracy[("FLS", 0.8)])
    mag = statistics.fmean(result.accuracy[("magnitude", 0.8)])
    print(f"\n80%: FLS {result.accuracy[('FLS', 0.8)]} magnitude {result.accuracy[('magnitude', 0.8)]}")
    assert fls - mag >= 0.25, (fls, mag)
