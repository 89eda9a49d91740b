"""Layer-wise Fisher-vector products from captures against brute-force per-sample gradients."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from fls_kernels.curvature import Categorical, ModelCurvature
from fls_kernels.curvature.captures import Capture, LayerCapture
from fls_kernels.layers import find_layers

F64 = torch.float64


class Net(nn.Module):
    """A grouped conv with bias (per-sample-gradient form) and a Linear over tokens (tokens form)."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(4, 6, 3, padding=1, stride=2, groups=2)
        self.tok = nn.Linear(6, 5)
        self.fc = nn.Linear(5 * 9, 3, bias=False)

    def forward(self, x):
        h = torch.tanh(self.conv(x))  # [B, 6, 3, 3]
        h = torch.tanh(self.tok(h.flatten(2).transpose(1, 2)))  # [B, 9, 5] — 9 tokens
        return self.fc(h.flatten(1))


def per_sample_grads(model, views, lik, x, y):
    """[B] lists of per-layer [m, n] gradients of −log p(y_b | x_b)."""
    out = []
    for b in range(x.shape[0]):
        loss = lik.nll(model(x[b : b + 1]), y[b : b + 1]).sum()
        grads = torch.autograd.grad(loss, [p for v in views for p in v.parameters().values()])
        k, per = 0, []
        for v in views:
            per.append(v.to_matrix(list(grads[k : k + len(v.parameters())])))
            k += len(v.parameters())
        out.append(per)
    return out


def test_capture_fvp_equals_per_sample_definition():
    torch.manual_seed(5)
    model = Net().double()
    views = find_layers(model)
    lik = Categorical()
    xs = [torch.randn(b, 4, 6, 6, dtype=F64) for b in (3, 5)]
    curv = ModelCurvature(model, views, lik)
    captures = curv.capture(iter(xs), 2, generator=torch.Generator().manual_seed(11))
    assert len(captures) == 2 and [c.rows for c in captures] == [3, 5]
    forms = {v.name: captures[0].batches[0][i].grads is None for i, v in enumerate(views)}
    assert set(forms.values()) == {True, False}, "both storage forms must be exercised"

    gen = torch.Generator().manual_seed(11)
    grads = []
    for x in xs:
        with torch.no_grad():
            y = lik.sample(model(x), gen)
        grads += per_sample_grads(model, views, lik, x, y)
    vs = [torch.randn(v.m, v.n, dtype=F64) for v in views]
    want = [sum((g[i] * vs[i]).sum() * g[i] for g in grads) / len(grads) for i in range(len(views))]
    got = Capture.join(captures).fvp(vs)
    for w, g in zip(want, got):
        torch.testing.assert_close(g, w)
    # One batch alone is weighted by its own rows.
    first = [sum((g[i] * vs[i]).sum() * g[i] for g in grads[:3]) / 3 for i in range(len(views))]
    for w, g in zip(first, captures[0].fvp(vs)):
        torch.testing.assert_close(g, w)
    assert Capture.join(captures).nbytes() == sum(c.nbytes() for c in captures) > 0


@pytest.mark.parametrize("tokens", [1, 40], ids=["grads-form", "tokens-form"])
def test_layer_capture_forms_agree(tokens):
    view = find_layers(nn.Sequential(nn.Linear(7, 6, bias=False)))[0]
    g = torch.Generator().manual_seed(tokens)
    a = torch.randn(4, 1, tokens, 7, generator=g, dtype=F64)
    d = torch.randn(4, 1, tokens, 6, generator=g, dtype=F64)
    c = LayerCapture(view, a, d)
    assert (c.grads is None) == (tokens * 13 <= 42)
    v = torch.randn(6, 7, generator=g, dtype=F64)
    gb = torch.einsum("btk,btn->bkn", d[:, 0], a[:, 0])
    torch.testing.assert_close(c.product_sum(v), torch.einsum("b,bkn->kn", (gb * v).sum((1, 2)), gb))
    with pytest.raises(ValueError, match="a, d"):
        LayerCapture(view, a, d[..., :5])


def test_capture_needs_a_batch():
    with pytest.raises(ValueError, match="layers"):
        Capture([])
