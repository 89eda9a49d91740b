"""The causal-LM perplexity study, CI-sized: a tiny GPT trained on CPython's documentation (cached, and reused
when its configuration matches), pruned by two methods in two cells, tabulated with the paired NLL difference."""

from __future__ import annotations

import math

import pytest

from benchmarks.quality import gpt

pytest.importorskip("transformers")


def test_segments_are_disjoint_and_cover_the_text():
    parts = gpt.segments(gpt.Config())
    assert "".join(parts.values()) == gpt.text()
    assert all(len(p) > 10_000 for p in parts.values())


def test_the_study_runs_every_method_and_cell_and_caches_its_model(tmp_path, monkeypatch):
    import dataclasses

    config = gpt.Config(**{**gpt.SMOKE, "cache": str(tmp_path / "model")})
    rows = gpt.run(config, log=lambda _: None)
    assert [(r["method"], r["cell"]) for r in rows] == [
        ("dense", "—"), ("fls", "50%"), ("fls@blocks+2", "50%"), ("sparsegpt", "50%"), ("fls", "2:4"),
        ("fls@blocks+2", "2:4"), ("sparsegpt", "2:4"),
    ]  # fmt: skip
    assert all(math.isfinite(r["perplexity"]) and len(r["window_nll"]) == config.eval_windows for r in rows)
    d = gpt.paired(rows[1], rows)
    assert d is not None and gpt.paired(rows[3], rows) is None and rows[2]["perplexity"] != rows[1]["perplexity"]
    text = gpt.table(rows, config)
    assert (
        f"| 50% | fls | {rows[1]['val_perplexity']:.3f} | {rows[1]['perplexity']:.3f} | {d[0]:+.4f} ± {d[1]:.4f} |"
        in text
    )
    paths = gpt.write(rows, config, tmp_path / "out", stamp="stamped")
    assert [p.name for p in paths] == ["gpt.csv", "gpt_windows.csv", "gpt.md"] and "stamped" in paths[2].read_text()

    def no_training(*_, **__):
        raise AssertionError("the cached model must be reused")

    monkeypatch.setattr(gpt, "train", no_training)
    again = gpt.run(dataclasses.replace(config, methods=("magnitude",), cells=("50%",)), log=lambda _: None)
    assert again[0]["perplexity"] == pytest.approx(rows[0]["perplexity"], rel=1e-6)
    for bad in ("nope", "fls@layers", "fls+x"):
        with pytest.raises(ValueError, match="methods: unknown"):
            gpt.run(dataclasses.replace(config, methods=(bad,)))
    for bad in ("fls/prune", "fls@blocks/prune-last", "sparsegpt@blocks+2/prune"):
        with pytest.raises(ValueError, match="'/prune' validates an FLS fit block by block"):
            gpt.run(dataclasses.replace(config, methods=(bad,)))
    # FLS's fit validated by trial prunes on the validation windows: a row of its own, beside the plain fit's
    validated = gpt.run(
        dataclasses.replace(config, methods=("fls@blocks+2/prune", "fls@blocks+2/prune-last"), cells=("50%",)),
        log=lambda _: None,
    )
    assert [r["method"] for r in validated[1:]] == ["fls@blocks+2/prune", "fls@blocks+2/prune-last"]
    assert all(math.isfinite(r["perplexity"]) for r in validated)
