"""Block-sequential pruning (``sequential="blocks"``): every method on stock causal LMs, the same result as
whole-model mode where the two must agree, one block's state resident, and bad input refused with the model
untouched."""

from __future__ import annotations

import copy
import math

import pytest
import torch
from torch import nn

import fls_kernels as fls
from fls_kernels.pruning import sequential
from tests.models.test_causal_lms import MODELS, _tokens
from tests.pruning.helpers import KINDS, LAYERWISE, assert_identical, build, snapshot, takes

transformers = pytest.importorskip("transformers")


class MLPBlock(nn.Module):
    """y = x + W₂ tanh(W₁ x), or, between widths, W₂ tanh(W₁ x)."""

    def __init__(self, d_in: int, d_out: int, hidden: int = 12) -> None:
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(d_in, hidden), nn.Linear(hidden, d_out)

    def forward(self, x):
        y = self.fc2(torch.tanh(self.fc1(x)))
        return x + y if x.shape == y.shape else y


class Stack(nn.Module):
    """Repeated blocks in a ModuleList; ``between`` applies a layer norm between blocks (so they do not chain)."""

    def __init__(self, widths=(6, 6), between: bool = False, seed: int = 0) -> None:
        super().__init__()
        torch.manual_seed(seed)
        self.layers = nn.ModuleList(MLPBlock(a, b) for a, b in zip(widths[:-1], widths[1:]))
        self.between = between

    def forward(self, x):
        for block in self.layers:
            x = block(x)
            if self.between:
                x = nn.functional.layer_norm(x, x.shape[-1:])
        return x


def _data(d=6, batches=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(8, 5, d, generator=g) for _ in range(batches)]


def _bert(seed=0):
    torch.manual_seed(seed)
    config = transformers.BertConfig(
        vocab_size=40, hidden_size=16, num_hidden_layers=2, num_attention_heads=2, intermediate_size=32,
        max_position_embeddings=16,
    )  # fmt: skip
    return transformers.BertModel(config, add_pooling_layer=False).eval()


def _padded(batches=2, seed=0):
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(batches):
        mask = torch.ones(4, 9, dtype=torch.long)
        mask[1, 5:] = 0
        mask[3, 3:] = 0
        out.append({"input_ids": torch.randint(0, 40, (4, 9), generator=g), "attention_mask": mask})
    return out


def _pruned(kind, model, data, steps=2, sparsity=0.5, **kwargs):
    pruner = build(kind, model, **kwargs)
    pruner.fit(data, steps=steps)
    pruner.prune(sparsity, substeps=1 if kind in LAYERWISE else 2)
    return pruner


#: every method on GPT-2; FLS and SparseGPT (the two executors' paths) on OPT and Llama as well
CASES = [(kind, "gpt2") for kind in KINDS] + [(k, a) for k in ("fls", "sparsegpt") for a in ("opt", "llama")]


@pytest.mark.parametrize(("kind", "arch"), CASES)
def test_every_method_prunes_a_causal_lm_block_by_block(kind, arch):
    torch.manual_seed(0)
    model = MODELS[arch]().eval()
    pruner = _pruned(kind, model, _tokens(), sequential="blocks", allocation="uniform")
    for name, s in pruner.layer_sparsity().items():
        assert s == 0.5, name
    out = model(**_tokens(seed=1)[0]).logits
    assert torch.isfinite(out).all()
    usage = pruner.memory_usage()
    assert usage["inputs"] > 0 or not pruner.method.needs_data


@pytest.mark.parametrize("kind", LAYERWISE)
@pytest.mark.parametrize("arch", ["gpt2", "bert"])
def test_layerwise_methods_give_the_whole_model_result_block_by_block(kind, arch):
    """SparseGPT / Wanda group after group (``true_sequential=True``) measure each layer on the inputs of the model
    pruned so far in either mode: block by block they see the same inputs (padding left out alike), so masks and
    weights match bit for bit."""
    model = MODELS["gpt2"]().eval() if arch == "gpt2" else _bert()
    data = _tokens() if arch == "gpt2" else _padded()
    results = []
    for mode in (None, "blocks"):
        m = copy.deepcopy(model)
        pruner = _pruned(kind, m, data, sequential=mode, true_sequential=True)
        results.append(({k: v.clone() for k, v in pruner.masks.items()}, snapshot(m)))
    (masks, weights), (masks_b, weights_b) = results
    assert all(torch.equal(masks[k], masks_b[k]) for k in masks)
    assert all(torch.equal(weights[k], weights_b[k]) for k in weights)


ONE_BLOCK = [k for k in KINDS if takes(k, "likelihood") or k == "coreset"]


@pytest.mark.parametrize("kind", ONE_BLOCK)
def test_one_block_model_equals_whole_model_mode(kind):
    """A model that is one block, its output the block's: whole-model mode with a Gaussian likelihood on that output
    is the block objective, so both modes prune alike."""
    model = Stack(widths=(6, 6))
    data = _data()
    opts = {"likelihood": "gaussian"} if takes(kind, "likelihood") else {}
    if kind == "obert":
        opts["fisher"] = "sampled"
    whole = _pruned(kind, copy.deepcopy(model), data, **opts)
    blockwise_model = copy.deepcopy(model)
    blockwise = _pruned(kind, blockwise_model, data, sequential="blocks", **opts)
    for name in whole.masks:
        assert torch.equal(whole.masks[name], blockwise.masks[name]), name
    for (k, a), b in zip(whole.model.state_dict().items(), blockwise_model.state_dict().values()):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6, msg=k)


def _block_state_bytes(views) -> int:
    return sum(v.m * v.m + v.n * v.n + v.m * v.n for v in views) * 4


@pytest.mark.parametrize("kind", ["fls", "kfac"])
def test_peak_lambda_is_the_largest_blocks_and_matches_the_estimate(kind):
    """Blocks of different widths: the high-water mark of λ (and FLS's Adam state) is the largest block's, as the
    dry-run estimate says, far below whole-model mode's."""
    widths = (6, 10, 24, 8)
    model = Stack(widths=widths)
    data = _data()
    pruner = _pruned(kind, model, data, sequential="blocks")
    per_block = [_block_state_bytes([v for v in pruner.views if v.name.startswith(f"layers.{b}.")]) for b in range(3)]
    usage = pruner.memory_usage()
    assert usage["lambda"] == max(per_block)
    assert usage["lambda"] < sum(per_block)
    estimate = fls.FishLegPruner.estimate_memory(Stack(widths=widths), sequential="blocks", hidden=1)
    whole = fls.FishLegPruner.estimate_memory(Stack(widths=widths))
    assert estimate["lambda"] == usage["lambda"] and whole["lambda"] == sum(per_block)
    if kind == "fls":
        assert usage["optimizer"] == estimate["optimizer"]
    # captured inputs: 3 batches of [8, 5, width] float32, the widest pair (input and propagated output) at once
    assert usage["inputs"] == max(3 * 8 * 5 * (a + b) * 4 for a, b in zip(widths[:-1], widths[1:]))


def test_llama_7b_shaped_estimate_is_a_twentieth_of_whole_model_mode():
    config = transformers.LlamaConfig(
        vocab_size=32000, hidden_size=4096, intermediate_size=11008, num_hidden_layers=32, num_attention_heads=32,
        num_key_value_heads=32,
    )  # fmt: skip
    with torch.device("meta"):
        model = transformers.LlamaForCausalLM(config).to(torch.bfloat16)
    whole = fls.FishLegPruner.estimate_memory(model)
    blocks = fls.FishLegPruner.estimate_memory(model, sequential="blocks", tokens=128 * 2048)
    assert blocks["lambda"] + blocks["optimizer"] <= (whole["lambda"] + whole["optimizer"]) / 20
    assert blocks["inputs"] == 2 * 128 * 2048 * 4096 * 2
    assert blocks["model"] == whole["model"] == sum(p.numel() * 2 for p in model.parameters())
    offloaded = fls.FishLegPruner.estimate_memory(model, sequential="blocks", tokens=128 * 2048, offload=True)
    assert offloaded["inputs"] == 0 and offloaded["inputs_cpu"] == blocks["inputs"]


def test_blocks_that_do_not_chain_are_captured_from_the_model():
    """A norm between blocks: each block's inputs come from a forward of the (pruned) model, and SparseGPT group by
    group within each block still equals its whole-model result; a regex names blocks of an nn.Sequential."""
    model = Stack(widths=(6, 6, 6), between=True)
    data = _data()
    whole = copy.deepcopy(model)
    a = _pruned("sparsegpt", whole, data)
    b = _pruned("sparsegpt", model, data, sequential="blocks", true_sequential=True)
    assert all(torch.equal(a.masks[k], b.masks[k]) for k in a.masks)
    seq = nn.Sequential(MLPBlock(6, 6), nn.Tanh(), MLPBlock(6, 6))
    c = _pruned("wanda", seq, data, sequential="blocks", blocks=r"0|2")
    assert set(c.layer_sparsity().values()) == {0.5}


def test_offloaded_inputs_give_the_same_result():
    model = _bert()
    results = []
    for offload in (False, True):
        m = copy.deepcopy(model)
        pruner = _pruned("kfac", m, _padded(), sequential="blocks", offload=offload)
        results.append({k: v.clone() for k, v in pruner.masks.items()})
    assert all(torch.equal(results[0][k], results[1][k]) for k in results[0])


def test_a_failing_block_leaves_the_model_as_it_was(monkeypatch):
    model = Stack(widths=(6, 6, 6))
    before = snapshot(model)
    pruner = build("kfac", model, sequential="blocks")
    pruner.fit(_data())
    calls = []
    real = sequential.prune_substep

    def failing(ctx, method, increment):
        calls.append(ctx.views[0].name)
        if len(calls) > 1:
            raise RuntimeError("boom")
        real(ctx, method, increment)

    monkeypatch.setattr(sequential, "prune_substep", failing)
    with pytest.raises(RuntimeError, match="boom"):
        pruner.prune(0.5)
    assert pruner.num_pruned() == 0
    assert_identical(model, before)


def test_checkpoint_round_trip_and_global_allocation_per_block():
    model = Stack(widths=(6, 6, 6))
    pruner = _pruned("fls", model, _data(), sequential="blocks", allocation="global")
    for b in range(2):
        views = [v for v in pruner.views if v.name.startswith(f"layers.{b}.")]
        pruned = sum(int((~pruner.masks[v.name]).sum()) for v in views)
        assert pruned == math.ceil(0.5 * sum(v.m * v.n_weight for v in views))
    state = pruner.state_dict()
    other = build("fls", copy.deepcopy(model), sequential="blocks")
    other.load_state_dict(state)
    assert all(torch.equal(other.masks[k], pruner.masks[k]) for k in pruner.masks)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"sequential": "layers"}, "sequential"),
        ({"blocks": "layers"}, "blocks: only with"),
        ({"offload": True}, "offload: only with"),
        ({"sequential": "blocks", "schedule": lambda step: 0.5}, "schedule"),
        ({"sequential": "blocks", "likelihood": "categorical"}, "likelihood"),
        ({"sequential": "blocks", "blocks": "nothing"}, "blocks: no module path"),
        ({"sequential": "blocks", "blocks": "(["}, "blocks: invalid regex"),
        ({"sequential": "blocks", "offload": "yes"}, "offload"),
    ],
)
def test_bad_arguments_are_refused_before_the_model_is_touched(kwargs, match):
    model = Stack(widths=(6, 6, 6))
    before = snapshot(model)
    with pytest.raises((ValueError, TypeError), match=match):
        fls.FishLegPruner(model, **kwargs)
    assert_identical(model, before)
    fls.FishLegPruner(model).finalize()  # nothing left attached by the failed constructor


def test_layers_outside_the_blocks_are_named():
    model = transformers.BertModel(_bert().config)  # with its pooler, a Linear outside the encoder layers
    with pytest.raises(ValueError, match=r"outside the blocks.*pooler\.dense"):
        fls.SparseGPTPruner(model, sequential="blocks")
    fls.SparseGPTPruner(model, sequential="blocks", ignore=[r"pooler\..*"])


def test_held_out_batches_are_captured_block_by_block_for_early_stopping():
    """FLS's ``validation=`` batches (model inputs) reach each block as that block's inputs: every block's fit is
    validated on them from its start (step 0, the K-FAC start) and ends at its best held-out aux loss."""
    model = Stack(widths=(6, 6, 6))
    pruner = build("fls", model, sequential="blocks", validation=_data(seed=1), validate_every=1, lr=1e-2)
    pruner.fit(_data(), steps=4)
    pruner.prune(0.5)
    report = pruner.block_report()
    assert list(report) == ["layers.0", "layers.1"]
    for name, block in report.items():
        assert block["layers"] == [f"{name}.fc1", f"{name}.fc2"] and block["memory"]["lambda"] > 0
        steps = [step for step, _ in block["validation"]]
        assert steps[0] == 0 and len(steps) >= 2, block["validation"]
        assert all(math.isfinite(loss) for _, loss in block["validation"])
    assert fls.FishLegPruner(Stack()).block_report() == {}


def test_whole_model_only_options_are_refused_block_by_block():
    with pytest.raises(ValueError, match="fisher"):
        fls.OBERTPruner(Stack(), sequential="blocks", fisher="empirical")
    fls.OBERTPruner(Stack(), sequential="blocks", fisher="sampled", likelihood="gaussian")  # the block's own values


def test_an_nn_transformer_encoder_is_found_and_pruned_as_whole_model_mode_does():
    torch.manual_seed(0)
    layer = nn.TransformerEncoderLayer(d_model=8, nhead=2, dim_feedforward=16, dropout=0.0, batch_first=True)
    model = nn.TransformerEncoder(layer, num_layers=2, enable_nested_tensor=False).eval()
    data = _data(d=8)
    whole = _pruned("sparsegpt", copy.deepcopy(model), data)
    blocks = _pruned("sparsegpt", model, data, sequential="blocks", true_sequential=True)
    assert [b.name for b in blocks._sequential.blocks] == ["layers.0", "layers.1"]
    assert all(torch.equal(whole.masks[k], blocks.masks[k]) for k in whole.masks)


@pytest.mark.parametrize("kind", ["sparsegpt", "wanda"])
def test_layerwise_methods_run_each_block_once_per_pass_unless_true_sequential(kind):
    """Block by block, SparseGPT and Wanda measure all of a block's layers in one pass of the block over the
    calibration batches; ``true_sequential=True`` measures fc2 in a pass of its own, after fc1 is pruned."""
    data = _data(batches=3)
    calls, masks = {}, {}
    for true_sequential in (False, True):
        model = Stack(widths=(6, 6, 6))
        seen = []
        for block in model.layers:
            block.register_forward_pre_hook(lambda m, a, b=block: seen.append(b))
        pruner = _pruned(kind, model, data, sequential="blocks", true_sequential=true_sequential)
        calls[true_sequential] = [sum(c is b for c in seen) for b in model.layers]
        masks[true_sequential] = pruner.masks
    assert [t - f for t, f in zip(calls[True], calls[False])] == [len(data)] * 2, calls
    assert any(not torch.equal(masks[False][k], masks[True][k]) for k in masks[False])
    with pytest.raises(TypeError, match="true_sequential"):
        build(kind, Stack(), sequential="blocks", true_sequential=1)


def test_sparsegpt_block_by_block_prunes_each_layer_on_its_dense_block():
    """Block by block, every layer of the first block is pruned as if it were the only layer pruned (its H from the
    dense block), which is what the authors' flow does."""
    data = _data(batches=3)
    model = Stack(widths=(6, 6, 6))
    blocks = _pruned("sparsegpt", copy.deepcopy(model), data, sequential="blocks")
    for name in ("layers.0.fc1", "layers.0.fc2"):
        alone = _pruned("sparsegpt", copy.deepcopy(model), data, include=name)
        assert torch.equal(alone.masks[name], blocks.masks[name]), name
    true_sequential = _pruned("sparsegpt", copy.deepcopy(model), data, sequential="blocks", true_sequential=True)
    assert not torch.equal(true_sequential.masks["layers.0.fc2"], blocks.masks["layers.0.fc2"])


def test_all_input_moments_measure_every_layer_on_the_unpruned_model():
    """Σ a aᵀ of fc1's and fc2's inputs (bias column appended) from one forward per batch."""
    from fls_kernels.curvature.inputs import all_input_moments

    model, data = Stack(), _data(batches=2)
    views = build("sparsegpt", model).views
    got = all_input_moments(model, views, data, diagonal=False)
    block = model.layers[0]
    ones = torch.ones(40, 1)
    a1 = torch.cat([torch.cat([x.reshape(-1, 6), ones], 1) for x in data])
    a2 = torch.cat([torch.cat([torch.tanh(block.fc1(x)).reshape(-1, 12), ones], 1) for x in data])
    for m, a in zip(got, (a1, a2)):
        assert (m.samples, m.tokens) == (16, 80)
        torch.testing.assert_close(m.total[0], (a.T @ a).double(), rtol=1e-5, atol=1e-5)
    diag = all_input_moments(model, views, data, diagonal=True)
    torch.testing.assert_close(diag[1].total[0], got[1].total[0].diagonal())
