"""The digits λ study: its variants build the pruners they name, and a CI-sized run tabulates, writes and merges."""

from __future__ import annotations

import dataclasses
import math

import pytest

import fls_kernels as fls
from benchmarks.quality import digits, digits_lambda
from fls_kernels import demo


def test_variants_build_the_pruners_they_name():
    config = digits_lambda.Config()
    built = {
        v: digits_lambda.make(v, demo.DigitsCNN(), damping=1.0, config=config, seed=0, batches=2)
        for v in digits_lambda.ONE_SHOT + digits_lambda.GRADUAL
    }
    assert type(built["K-FAC"]) is type(built["K-FAC re-estimated"]) is fls.KFACPruner
    assert type(built["oBERT"]) is fls.OBERTPruner and built["oBERT"].method.num_grads == 256
    p = config.protocol
    fls_options = {
        v: (b.method.init, b.method.update_rule, b.method.refine_steps, b.method.refine_from)
        for v, b in built.items()
        if isinstance(b, fls.FishLegPruner)
    }
    assert fls_options == {
        "FLS-diagonal": ("diagonal", "diagonal", p.fls_refine_steps, "current"),
        "FLS-diagonal, 0 aux steps": ("diagonal", "diagonal", 0, "current"),
        "FLS, K-FAC start": ("kfac", "diagonal", p.fls_refine_steps, "current"),
        "FLS, K-FAC start, 0 aux steps": ("kfac", "diagonal", 0, "current"),
        "refined": ("diagonal", "diagonal", p.fls_gradual_refine_steps, "current"),
        "refined, K-FAC start": ("kfac", "diagonal", p.fls_gradual_refine_steps, "current"),
        "re-fitted from K-FAC": ("kfac", "diagonal", p.fls_gradual_refine_steps, "init"),
        "refined, few steps": ("kfac", "diagonal", config.cheap_refine_steps, "current"),
        "refined, K-FAC's compute": ("kfac", "diagonal", config.equal_refine_steps, "current"),
        "K-FAC start, frozen": ("kfac", "diagonal", 0, "current"),
    }
    tracking = {v: b.method.gradual_aux_steps for v, b in built.items() if isinstance(b, fls.FishLegPruner)}
    assert {v for v, t in tracking.items() if t == 0} == {digits_lambda.EQUAL_COMPUTE, digits_lambda.FROZEN}
    steps = {v: digits_lambda.fit_steps(v, config) for v in built}
    assert {v for v, s in steps.items() if s == 0} == {
        "FLS-diagonal, 0 aux steps",
        "FLS, K-FAC start, 0 aux steps",
        "K-FAC",
        "oBERT",
        "K-FAC re-estimated",
        "refined, K-FAC's compute",
        "K-FAC start, frozen",
    }
    assert set(digits_lambda.GRADUAL_DAMPING) == set(digits_lambda.GRADUAL)
    assert set(digits_lambda.GRADUAL_DAMPING.values()) <= set(digits_lambda.ONE_SHOT)


def test_calibration_is_the_first_n_training_samples():
    data = digits.split(0)
    xs, _ = digits.train_tensors(data)
    loader = digits_lambda.calibration(data, 300)
    assert [len(x) for x, _ in loader] == [128, 128, 44]
    assert (loader[0][0] == xs[:128]).all() and (loader[-1][0] == xs[256:300]).all()
    assert [len(x) for x, _ in digits_lambda.calibration(data, 64)] == [64]
    with pytest.raises(ValueError, match="calib_sizes"):
        digits_lambda.calibration(data, len(xs) + 1)


def test_a_ci_sized_run_tabulates_writes_and_merges(tmp_path):
    config = digits_lambda.Config(
        **{
            **digits_lambda.SMOKE,
            "one_shot": ("FLS-diagonal", "FLS-diagonal, 0 aux steps", "K-FAC"),
            "gradual": ("re-fitted from K-FAC", digits_lambda.EQUAL_COMPUTE, "K-FAC re-estimated"),
        }
    )
    with pytest.raises(ValueError, match="variants: unknown"):
        digits_lambda.run(dataclasses.replace(config, gradual=("refitted",)))
    with pytest.raises(ValueError, match="sweep_sparsity"):
        digits_lambda.run(dataclasses.replace(config, sweep_sparsity=0.5))
    rows = digits_lambda.run(config, log=lambda _: None)
    shot = [r for r in rows if r["mode"] == "one-shot"]
    assert len(shot) == 3 * 2 * 2  # variants × calibration sizes × sparsities
    assert all(0.0 <= r["accuracy"] <= 1.0 and math.isfinite(r["val_accuracy"]) for r in shot)
    aux = {(r["variant"], r["calibration"]): (r["held_out_aux_start"], r["held_out_aux"]) for r in shot}
    assert all(math.isfinite(a) for (variant, _), pair in aux.items() if variant.startswith("FLS") for a in pair)
    assert all(math.isnan(a) for (variant, _), pair in aux.items() if variant == "K-FAC" for a in pair)
    start, fitted = aux[("FLS-diagonal", 64)]
    assert start != fitted  # the aux steps moved λ
    zero = aux[("FLS-diagonal, 0 aux steps", 64)]
    assert zero[0] == zero[1]  # no aux step: the start is the λ pruned with (same probes, same batches)
    grad = [r for r in rows if r["mode"] == "gradual"]
    assert [r["variant"] for r in grad] == ["re-fitted from K-FAC", digits_lambda.EQUAL_COMPUTE, "K-FAC re-estimated"]
    text = digits_lambda.table(rows, config)
    assert "| 32 | 80% |" in text and "| 64 | 90% |" in text and "| re-fitted from K-FAC |" in text
    assert "FLS-diagonal − FLS-diagonal, 0 aux steps" in text and " ± 0.000 |" in text
    assert "Held-out aux loss" in text and "| FLS-diagonal: aux loss | accuracy |" in text
    first = digits_lambda.write(rows, config, tmp_path / "a", stamp="stamp a")
    assert all(p.exists() for p in first)
    other = [{**r, "seed": 1} for r in rows]
    digits_lambda.write(other, config, tmp_path / "b", stamp="stamp b")
    merged, stamps = digits_lambda.merge([tmp_path / "a", tmp_path / "b"])
    assert len(merged) == 2 * len(rows) and stamps == "stamp a stamp b"
    assert "seeds [0, 1]" in digits_lambda.table(merged, config) and "seeds [0]" in text
    with pytest.raises(ValueError, match="more than one run"):
        digits_lambda.merge([tmp_path / "a", tmp_path / "a"])
    old = (tmp_path / "a" / "digits_lambda.csv").read_text().splitlines()  # a run from before the column
    (tmp_path / "c").mkdir()
    (tmp_path / "c" / "digits_lambda.csv").write_text("\n".join(line.rsplit(",", 2)[0] for line in old) + "\n")
    earlier, _ = digits_lambda.merge([tmp_path / "c"])
    assert all(math.isnan(r["held_out_aux"]) for r in earlier) and len(earlier) == len(rows)
    assert "Held-out aux loss" not in digits_lambda.table(earlier, config)


def test_the_cli_merges_runs_of_the_digits_lambda_study(tmp_path, capsys):
    from benchmarks.__main__ import main

    config = digits_lambda.Config()
    row = dict(
        mode="one-shot",
        variant="K-FAC",
        calibration=64,
        sparsity=0.8,
        damping=1.0,
        val_accuracy=0.5,
        accuracy=0.5,
        seconds=1.0,
    )
    for seed in (0, 1):
        digits_lambda.write([{**row, "seed": seed}], config, tmp_path / str(seed), stamp=f"s{seed}")
    argv = ["quality", "--model", "digits", "--lambda-study", "--out", str(tmp_path / "m"), "--merge"]
    assert main(argv + [str(tmp_path / "0"), str(tmp_path / "1")]) == 0
    assert "seeds [0, 1]" in (tmp_path / "m" / "digits_lambda.md").read_text()
    assert "| 64 | 80% | 0.500 ± 0.000 |" in capsys.readouterr().out


def test_the_cli_sets_the_digits_lambda_studys_fields(tmp_path, monkeypatch):
    from benchmarks import __main__ as cli

    seen = {}

    def run(config, log=print):
        seen["config"] = config
        return []

    monkeypatch.setattr(digits_lambda, "run", run)
    argv = ["quality", "--model", "digits", "--lambda-study", "--quick", "--out", str(tmp_path), "--seed-list", "2"]
    assert cli.main(argv + ["--set", "one_shot=K-FAC", "gradual=refined, K-FAC's compute,K-FAC re-estimated"]) == 0
    config = seen["config"]
    assert config.one_shot == ("K-FAC",) and config.gradual == (digits_lambda.EQUAL_COMPUTE, "K-FAC re-estimated")
    assert config.seeds == (2,) and config.protocol == digits_lambda.SMOKE["protocol"]
    with pytest.raises(SystemExit):
        cli.main(argv + ["--set", "gradaul=K-FAC"])
