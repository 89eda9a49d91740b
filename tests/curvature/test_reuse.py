"""A module called more than once in one forward: statistics, captures and FVPs count every call."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from fls_kernels.curvature import Categorical, ModelCurvature
from fls_kernels.layers import find_layers
from tests.curvature.test_fisher import dense_fisher

F64 = torch.float64


class Twice(nn.Module):
    """``mix`` (a Linear over tokens) runs twice, ``conv`` twice on different resolutions."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(2, 2, 3, padding=1)
        self.mix = nn.Linear(5, 5)
        self.head = nn.Linear(5, 3, bias=False)

    def forward(self, x):  # x: [B, 2, 6, 6]
        h = torch.tanh(self.conv(x))
        h = torch.tanh(self.conv(h[:, :, ::2, ::2]))  # [B, 2, 3, 3]
        t = h.flatten(2)[:, :, :5]  # [B, 2 tokens, 5]
        t = self.mix(torch.tanh(self.mix(t)))
        return self.head(t.mean(1))


def _per_sample(model, views, lik, xs, gen):
    """Brute force with the same sampled labels: per-sample gradients g_b and, per layer, every call's
    (patches, output grads) of each sample."""
    model.eval()
    out = []
    for x in xs:
        with torch.no_grad():
            y = lik.sample(model(x), gen)
        for b in range(x.shape[0]):
            cache = {i: [] for i in range(len(views))}
            hooks = [
                v.module.register_forward_hook(lambda mod, a, o, i=i: cache[i].append((a[0], o)))
                for i, v in enumerate(views)
            ]
            pred = model(x[b : b + 1])
            for h in hooks:
                h.remove()
            outs = [o for i in range(len(views)) for _, o in cache[i]]
            params = [p for v in views for p in v.parameters().values()]
            grads = torch.autograd.grad(lik.nll(pred, y[b : b + 1]).sum(), params + outs)
            g, k, rest = [], 0, list(grads[len(params) :])
            calls = []
            for i, v in enumerate(views):
                g.append(v.to_matrix(list(grads[k : k + len(v.parameters())])))
                k += len(v.parameters())
                calls.append([(v.patches(a.detach())[0], v.output_grads(rest.pop(0))[0]) for a, _ in cache[i]])
            out.append((g, calls))
    return out


def test_twice_called_layers_are_found_once():
    views = find_layers(Twice())
    assert [v.name for v in views] == ["conv", "mix", "head"]


def test_statistics_of_reused_layers_equal_per_sample_definitions():
    torch.manual_seed(0)
    model = Twice().double()
    views, lik = find_layers(model), Categorical()
    xs = [torch.randn(3, 2, 6, 6, dtype=F64) for _ in range(2)]
    curv = ModelCurvature(model, views, lik)
    stats = curv.statistics(iter(xs), 2, kfac=True, generator=torch.Generator().manual_seed(4))
    samples = _per_sample(model, views, lik, xs, torch.Generator().manual_seed(4))
    for i, (v, s) in enumerate(zip(views, stats)):
        diag = sum(g[i] ** 2 for g, _ in samples) / len(samples)
        acts, grads = 0, 0
        for _, calls in samples:
            a = torch.cat([a for a, _ in calls[i]], dim=1)  # [g, T_total, n]
            d = torch.cat([d for _, d in calls[i]], dim=1)
            assert len(calls[i]) == (1 if v.name == "head" else 2)
            a, d = a.reshape(-1, v.n), d.transpose(0, 1).reshape(-1, v.m)
            acts = acts + a.T @ a / a.shape[0]
            grads = grads + d.T @ d
        torch.testing.assert_close(s.diag, diag)
        torch.testing.assert_close(s.act_cov, acts / len(samples))
        torch.testing.assert_close(s.grad_cov, grads / len(samples))
        assert s.diag.abs().sum() > 0


def test_fvp_and_layerwise_capture_of_reused_layers():
    torch.manual_seed(1)
    model = Twice().double()
    views, lik = find_layers(model), Categorical()
    x = torch.randn(4, 2, 6, 6, dtype=F64)
    curv = ModelCurvature(model, views, lik)
    vs = [torch.randn(v.m, v.n, dtype=F64) for v in views]
    got = torch.cat([p.reshape(-1) for p in curv.fvp(x, vs)])
    flat = torch.cat([v.reshape(-1) for v in vs])
    torch.testing.assert_close(got, dense_fisher(model, views, lik, x) @ flat)

    (capture,) = curv.capture(iter([x]), 1, generator=torch.Generator().manual_seed(9))
    samples = _per_sample(model, views, lik, [x], torch.Generator().manual_seed(9))
    for i, p in enumerate(capture.fvp(vs)):
        want = sum((g[i] * vs[i]).sum() * g[i] for g, _ in samples) / len(samples)
        torch.testing.assert_close(p, want)


def test_a_call_that_misses_the_output_is_refused():
    class Dangling(Twice):
        def forward(self, x):
            self.mix(torch.zeros(x.shape[0], 2, 5, dtype=x.dtype))  # an extra call whose output is dropped
            return super().forward(x)

    model = Dangling().double()
    curv = ModelCurvature(model, find_layers(model), Categorical())
    with pytest.raises(ValueError, match="layer 'mix' was called 3 times but only 2"):
        curv.statistics(iter([torch.randn(2, 2, 6, 6, dtype=F64)]), 1, kfac=False)


def test_input_moments_of_a_reused_layer_sum_every_call():
    from fls_kernels.curvature.inputs import call_counts, input_moments

    torch.manual_seed(2)
    model = Twice().double()
    views = find_layers(model)
    xs = [torch.randn(3, 2, 6, 6, dtype=F64) for _ in range(2)]
    assert call_counts(model, views, xs[0], lambda b: ((b,), {})) == [2, 2, 1]
    seen = []
    hook = model.mix.register_forward_pre_hook(lambda mod, args: seen.append(args[0].detach()))
    for x in xs:
        model(x)
    hook.remove()
    mix = views[1]
    want = sum(torch.einsum("bgtn,bgtk->gnk", mix.patches(a), mix.patches(a)) for a in seen)
    (got,) = input_moments(model, views[1:], xs, diagonal=False, reused=True)
    torch.testing.assert_close(got.total, want)
    assert got.samples == 6 and got.tokens == 6 * 2 * 2
    first_only = input_moments(model, views[1:], xs, diagonal=False)[0]
    assert not torch.allclose(first_only.total, want), "without reused= only one call is measured"


class Tied(nn.Module):
    """``a`` and ``c`` hold one weight (their biases differ); ``head`` is separate."""

    def __init__(self):
        super().__init__()
        self.a, self.c, self.head = nn.Linear(4, 4), nn.Linear(4, 4), nn.Linear(4, 3)
        self.c.weight = self.a.weight

    def forward(self, x):
        return self.head(torch.tanh(self.c(torch.tanh(self.a(x)))))


def test_tied_modules_are_one_view_with_the_curvature_of_both_uses():
    torch.manual_seed(5)
    model = Tied().double()
    views = find_layers(model)
    assert [(v.name, v.aliases, v.has_bias) for v in views] == [("a", ("c",), False), ("head", (), True)]
    lik = Categorical()
    xs = [torch.randn(5, 4, dtype=F64) for _ in range(2)]
    stats = ModelCurvature(model, views, lik).statistics(
        iter(xs), 2, kfac=False, generator=torch.Generator().manual_seed(1)
    )
    gen, diag, count = torch.Generator().manual_seed(1), [0, 0], 0
    model.eval()
    for x in xs:
        with torch.no_grad():
            y = lik.sample(model(x), gen)
        for b in range(x.shape[0]):
            params = [model.a.weight, model.head.weight, model.head.bias]
            ga, gw, gb = torch.autograd.grad(lik.nll(model(x[b : b + 1]), y[b : b + 1]).sum(), params)
            diag[0] = diag[0] + ga**2  # the shared weight's gradient sums both uses
            diag[1] = diag[1] + torch.cat([gw, gb[:, None]], 1) ** 2
            count += 1
    for s, d in zip(stats, diag):
        torch.testing.assert_close(s.diag, d / count)

    x = xs[0]
    vs = [torch.randn(v.m, v.n, dtype=F64) for v in views]
    got = torch.cat([p.reshape(-1) for p in ModelCurvature(model, views, lik).fvp(x, vs)])
    torch.testing.assert_close(got, dense_fisher(model, views, lik, x) @ torch.cat([v.reshape(-1) for v in vs]))


def test_sharing_a_weight_with_a_module_that_is_not_pruned_is_refused():
    import fls_kernels as fls

    class LM(nn.Module):
        def __init__(self):
            super().__init__()
            self.wte, self.lm_head = nn.Embedding(7, 4), nn.Linear(4, 7, bias=False)
            self.lm_head.weight = self.wte.weight

        def forward(self, x):
            return self.lm_head(self.wte(x))

    with pytest.raises(ValueError, match=r"'lm_head.weight' is the same tensor as 'wte.weight'.*ignore=\('lm_head',\)"):
        fls.MagnitudePruner(LM())
    with pytest.raises(ValueError, match="'a.weight' is the same tensor as 'c.weight'"):
        fls.MagnitudePruner(Tied(), ignore=("c",))
    with pytest.raises(ValueError, match="'a' and 'c' share their weight but are different layers"):
        model = Tied()
        model.c = nn.Linear(4, 4, bias=False)
        model.c.weight = model.a.weight
        model.c.in_features = 5  # a different configuration
        find_layers(model)
