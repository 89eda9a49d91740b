"""Every pruner on the architectures people bring (tiny, random, CPU): BERT (without and with its pooler, and
BertForSequenceClassification) and GPT-2 from transformers, nn.TransformerEncoder, a ResNet-18-style and a
MobileNetV2-style CNN. Each: fit, prune to 70% with exact zeros,
a finite loss, masks that hold through Adam steps, a working model after finalize(); FLS below magnitude."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

import fls_kernels as fls
from tests.pruning.helpers import KINDS, LAYERWISE, build, takes

#: options over the methods' quick options where these models need them (a new method runs with its own)
OPTIONS = {"fls": dict(refine_steps=3, relative_damping=0.01), "obert": dict(fisher="sampled", num_grads=16)}


class Basic(nn.Module):
    """ResNet's basic block: two 3×3 convs with BatchNorm, a 1×1 strided shortcut when the shape changes."""

    def __init__(self, cin, cout, stride):
        super().__init__()
        self.c1, self.b1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False), nn.BatchNorm2d(cout)
        self.c2, self.b2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False), nn.BatchNorm2d(cout)
        self.short = (
            nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))
            if stride != 1 or cin != cout
            else nn.Identity()
        )

    def forward(self, x):
        return torch.relu(self.b2(self.c2(torch.relu(self.b1(self.c1(x))))) + self.short(x))


class ResNetish(nn.Module):
    def __init__(self, classes=5):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 8, 3, 1, 1, bias=False), nn.BatchNorm2d(8), nn.ReLU())
        self.blocks = nn.Sequential(Basic(8, 8, 1), Basic(8, 12, 2), Basic(12, 16, 2), Basic(16, 16, 1))
        self.fc = nn.Linear(16, classes)

    def forward(self, x):
        return self.fc(self.blocks(self.stem(x)).mean((2, 3)))


class Inverted(nn.Module):
    """MobileNetV2's inverted residual: 1×1 expand, 3×3 depthwise, 1×1 linear projection."""

    def __init__(self, cin, cout, stride, expand=4):
        super().__init__()
        mid = cin * expand
        self.body = nn.Sequential(
            nn.Conv2d(cin, mid, 1, bias=False), nn.BatchNorm2d(mid), nn.ReLU6(),
            nn.Conv2d(mid, mid, 3, stride, 1, groups=mid, bias=False), nn.BatchNorm2d(mid), nn.ReLU6(),
            nn.Conv2d(mid, cout, 1, bias=False), nn.BatchNorm2d(cout),
        )  # fmt: skip
        self.residual = stride == 1 and cin == cout

    def forward(self, x):
        return x + self.body(x) if self.residual else self.body(x)


class MobileNetish(nn.Module):
    def __init__(self, classes=5):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 8, 3, 2, 1, bias=False), nn.BatchNorm2d(8), nn.ReLU6())
        self.blocks = nn.Sequential(Inverted(8, 8, 1), Inverted(8, 12, 2), Inverted(12, 12, 1))
        self.head = nn.Linear(12, classes)

    def forward(self, x):
        return self.head(self.blocks(self.stem(x)).mean((2, 3)))


class Encoder(nn.Module):
    def __init__(self, classes=5):
        super().__init__()
        self.embed = nn.Linear(6, 16)
        layer = nn.TransformerEncoderLayer(16, 2, 32, dropout=0.1, batch_first=True)
        self.encoder = nn.TransformerEncoder(layer, 2, enable_nested_tensor=False)
        self.head = nn.Linear(16, classes)

    def forward(self, x, mask=None):
        return self.head(self.encoder(self.embed(x), src_key_padding_mask=mask).mean(1))


def _images(seed):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(12, 3, 16, 16, generator=g) for _ in range(4)]


def _tokens(seed, vocab=40):
    g = torch.Generator().manual_seed(seed)
    return [{"input_ids": torch.randint(0, vocab, (6, 10), generator=g)} for _ in range(4)]


def _bert_config(**kw):
    transformers = pytest.importorskip("transformers")
    return transformers.BertConfig(
        vocab_size=40, hidden_size=16, num_hidden_layers=2, num_attention_heads=2, intermediate_size=32,
        max_position_embeddings=16, hidden_dropout_prob=0.1, attention_probs_dropout_prob=0.1, **kw,
    )  # fmt: skip


def _bert(pooler=False):
    """A stock BertModel; the likelihood reads last_hidden_state, which its pooler does not reach (the curvature
    methods leave the pooler out, the others prune it)."""
    transformers = pytest.importorskip("transformers")
    return transformers.BertModel(_bert_config(), add_pooling_layer=pooler)


def _bert_classifier():
    """BertForSequenceClassification: pooler and classifier head, a categorical likelihood on the logits."""
    transformers = pytest.importorskip("transformers")
    return transformers.BertForSequenceClassification(_bert_config(num_labels=3))


def _gpt2():
    transformers = pytest.importorskip("transformers")
    config = transformers.GPT2Config(vocab_size=40, n_positions=16, n_embd=16, n_layer=2, n_head=2)
    return transformers.GPT2LMHeadModel(config)


#: name → (model factory, batches, likelihood, pruner keywords)
MODELS = {
    "resnet18ish": (ResNetish, _images, "categorical", {}),
    "mobilenetv2ish": (MobileNetish, _images, "categorical", {}),
    "transformer_encoder": (
        Encoder,
        lambda s: [torch.randn(8, 5, 6, generator=torch.Generator().manual_seed(s + k)) for k in range(4)],
        "categorical",
        {},
    ),  # fmt: skip
    "bert": (_bert, _tokens, "gaussian", {}),
    "bert_pooler": (lambda: _bert(pooler=True), _tokens, "gaussian", {}),
    "bert_classifier": (_bert_classifier, _tokens, "categorical", {}),
    "gpt2": (_gpt2, _tokens, "categorical", {}),  # lm_head, tied to the embedding, stays dense by default
}


def _out(model, batch):
    out = model(**batch) if isinstance(batch, dict) else model(batch)
    return fls.data.model_output(out) if not isinstance(out, torch.Tensor) else out


def _distortion(model, dense_outputs, batches):
    """Mean squared distance of the outputs to the dense model's (0 for the dense model itself)."""
    model.eval()
    with torch.no_grad():
        return sum(float((_out(model, b) - d).pow(2).mean()) for b, d in zip(batches, dense_outputs)) / len(batches)


def _pruner(kind, model, likelihood, **kw):
    """The registry's pruner of ``kind``, given the model's likelihood where it reads the output."""
    common = dict(likelihood=likelihood, **kw) if takes(kind, "likelihood") else kw
    return build(kind, model, **OPTIONS.get(kind, {}), **common)


def _expected(pruner, s):
    if pruner.ctx.allocation == "global":
        return math.ceil(round(s * pruner.num_prunable(), 9))
    return sum(math.ceil(round(s * v.m * v.n_weight, 9)) for v in pruner.views)


def _prune(name, kind, seed=0):
    make, data, likelihood, kw = MODELS[name]
    torch.manual_seed(seed)
    model = make()
    calib, held = data(seed), data(seed + 100)
    model.eval()
    with torch.no_grad():
        dense = [_out(model, b) for b in held]
    pruner = _pruner(kind, model, likelihood, **kw)
    pruner.fit(calib, steps=5)
    pruner.prune(0.7, substeps=1 if kind in LAYERWISE else 2)
    return model, pruner, held, dense


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("name", list(MODELS))
def test_every_pruner_on_every_architecture(name, kind):
    model, pruner, held, dense = _prune(name, kind)
    zeros = sum(int((v.weight == 0).sum()) for v in pruner.views)
    assert zeros == _expected(pruner, 0.7)
    assert math.isfinite(_distortion(model, dense, held))
    # masks hold through Adam steps on a task loss
    model.train()
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    for b in held[:3]:
        opt.zero_grad()
        _out(model, b).float().pow(2).mean().backward()
        opt.step()
    assert sum(int((v.weight == 0).sum()) for v in pruner.views) >= zeros
    assert all(bool((v.weight[~pruner.masks[v.name]] == 0).all()) for v in pruner.views)
    pruner.finalize()
    model.eval()
    with torch.no_grad():
        assert all(torch.isfinite(_out(model, b)).all() for b in held)
    assert sum(int((v.weight == 0).sum()) for v in pruner.views) >= zeros


@pytest.mark.parametrize("name", list(MODELS))
def test_fls_distorts_less_than_magnitude(name):
    results = {}
    for kind in ("fls", "magnitude"):
        model, _, held, dense = _prune(name, kind, seed=1)
        results[kind] = _distortion(model, dense, held)
    assert results["fls"] < results["magnitude"], results


@pytest.mark.parametrize("kind", KINDS)
def test_bert_heads_are_pruned_where_the_likelihood_reads_them(kind):
    """BertModel's pooler does not reach last_hidden_state: the methods that read the output leave it out (and
    keep it dense); the others prune it. In BertForSequenceClassification it feeds the logits: every method
    prunes it and the classifier."""
    reads_output = takes(kind, "likelihood")
    model, pruner, _, _ = _prune("bert_pooler", kind)
    assert ("pooler.dense" in pruner.layer_names) is not reads_output
    assert bool((model.pooler.dense.weight != 0).all()) is reads_output
    _, pruner, _, _ = _prune("bert_classifier", kind)
    assert {"bert.pooler.dense", "classifier"} <= set(pruner.layer_names)
