"""Exact Fisher-vector products and initialisation statistics against brute-force definitions."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from fls_kernels.curvature import Bernoulli, Categorical, Gaussian, ModelCurvature
from fls_kernels.layers import find_layers
from tests.jacobians import layer_jacobian

F64 = torch.float64


class Tiny(nn.Module):
    def __init__(self, out=3):
        super().__init__()
        self.conv = nn.Conv2d(2, 3, 3, padding=1, stride=2)
        self.drop = nn.Dropout(0.5)  # must be off while curvature is measured
        self.fc = nn.Linear(3 * 3 * 3, out, bias=False)

    def forward(self, x):
        return self.fc(self.drop(torch.tanh(self.conv(x))).flatten(1))


def output_hessian(likelihood, out):
    """Per-sample H = ∇²_f(−log p) as [B, k, k]."""
    if isinstance(likelihood, Categorical):
        p = torch.softmax(out, -1)
        return torch.diag_embed(p) - p[:, :, None] * p[:, None, :]
    if isinstance(likelihood, Bernoulli):
        p = torch.sigmoid(out)
        return torch.diag_embed(p * (1 - p))
    return torch.eye(out.shape[1], dtype=out.dtype).expand(out.shape[0], -1, -1) / likelihood.sigma**2


def dense_fisher(model, views, likelihood, x):
    """(1/B) Σ_b J_bᵀ H_b J_b over the concatenated row-major layer matrices."""
    model.eval()
    out, J = layer_jacobian(model, views, x)  # [B, k, d]
    H = output_hessian(likelihood, out)
    return torch.einsum("bkd,bkl,ble->de", J, H, J) / out.shape[0]


@pytest.mark.parametrize("likelihood", [Categorical(), Bernoulli(), Gaussian(0.7)], ids=lambda l: l.name)
def test_fvp_equals_dense_fisher(likelihood):
    model = Tiny().double().train()
    views = find_layers(model)
    x = torch.randn(5, 2, 6, 6, dtype=F64)
    F = dense_fisher(model, views, likelihood, x)
    model.train()
    curv = ModelCurvature(model, views, likelihood)
    vs = [torch.randn(v.m, v.n, dtype=F64) for v in views]
    got = torch.cat([g.reshape(-1) for g in curv.fvp(x, vs)])
    torch.testing.assert_close(got, F @ torch.cat([v.reshape(-1) for v in vs]))
    assert model.training and model.drop.training, "train/eval flags must be restored"


def test_statistics_equal_per_sample_definitions():
    torch.manual_seed(3)
    model = Tiny().double()
    views = find_layers(model)
    lik = Categorical()
    xs = [torch.randn(4, 2, 6, 6, dtype=F64) for _ in range(2)]
    curv = ModelCurvature(model, views, lik)
    stats = curv.statistics(iter(xs), 2, kfac=True, generator=torch.Generator().manual_seed(7))

    # Brute force with the same sampled labels: per-sample gradients, captured inputs and output grads.
    gen = torch.Generator().manual_seed(7)
    model.eval()
    diag = [torch.zeros(v.m, v.n, dtype=F64) for v in views]
    act = [torch.zeros(v.n, v.n, dtype=F64) for v in views]
    grad = [torch.zeros(v.m, v.m, dtype=F64) for v in views]
    count = 0
    for x in xs:
        with torch.no_grad():
            y = lik.sample(model(x), gen)
        for b in range(x.shape[0]):
            cache = {}
            hooks = [
                v.module.register_forward_hook(lambda mod, a, o, i=i: cache.update({i: (a[0], o)}))
                for i, v in enumerate(views)
            ]
            out = model(x[b : b + 1])
            for h in hooks:
                h.remove()
            outs = [cache[i][1] for i in range(len(views))]
            loss = lik.nll(out, y[b : b + 1]).sum()
            grads = torch.autograd.grad(loss, [p for v in views for p in v.parameters().values()] + outs)
            k = 0
            for i, v in enumerate(views):
                g = v.to_matrix(list(grads[k : k + len(v.parameters())]))
                k += len(v.parameters())
                diag[i] += g**2
                a = v.patches(cache[i][0].detach())[0].reshape(-1, v.n)  # [g·T, n]
                act[i] += a.T @ a / a.shape[0]
                d = v.output_grads(grads[len(grads) - len(views) + i])[0].transpose(0, 1).reshape(-1, v.m)
                grad[i] += d.T @ d
            count += 1
    for i, s in enumerate(stats):
        torch.testing.assert_close(s.diag, diag[i] / count)
        torch.testing.assert_close(s.act_cov, act[i] / count)
        torch.testing.assert_close(s.grad_cov, grad[i] / count)


class Tokens(nn.Module):
    """Linear layers over a sequence (T locations per sample), one wide enough for the Gram-matrix trace at short T,
    one not, and a grouped convolution (Gram per group at short T)."""

    def __init__(self):
        super().__init__()
        self.wide = nn.Linear(12, 11)
        self.narrow = nn.Linear(11, 2)
        self.conv = nn.Conv1d(4, 24, 3, groups=2, bias=False)

    def forward(self, x):  # x: [B, 4, T]
        h = torch.tanh(self.conv(x)).transpose(1, 2)  # [B, T - 2, 24]
        h = h[..., :12] * h[..., 12:]  # [B, T - 2, 12]
        return self.narrow(torch.tanh(self.wide(h))).sum(1)


@pytest.mark.parametrize("T", [4, 40], ids=["short", "long"])
def test_trace_only_statistics_equal_the_trace_of_the_full_diagonal(T):
    """diag=False keeps tr F̂ (by Gram matrices of the locations where that is cheaper, by per-sample gradients
    otherwise): the same tr F̂ as the full diagonal, the same K-FAC factors, and no diagonal to read."""
    torch.manual_seed(T)
    model = Tokens().double()
    views = find_layers(model)
    xs = [torch.randn(3, 4, T, dtype=F64) for _ in range(2)]
    curv = ModelCurvature(model, views, Gaussian(0.8))
    full, trace = (
        curv.statistics(iter(xs), 2, kfac=True, diag=d, generator=torch.Generator().manual_seed(5))
        for d in (True, False)
    )
    for f, t in zip(full, trace):
        assert f.diag_trace > 0
        assert t.diag_trace == pytest.approx(f.diag.sum().item(), rel=1e-12)
        assert f.diag_trace == pytest.approx(f.diag.sum().item(), rel=1e-12)
        torch.testing.assert_close(t.act_cov, f.act_cov)
        torch.testing.assert_close(t.grad_cov, f.grad_cov)
        with pytest.raises(RuntimeError, match="only the trace"):
            t.diag
    assert [len(t.totals()[0]) for t in trace] == [1, 1, 1]


@pytest.mark.parametrize("likelihood", [Categorical(), Gaussian(0.8)])
def test_label_samples_average_draws_as_if_each_batch_came_k_times(likelihood):
    """k labels per input, one backward each: the statistics of a pass over batches [x₁, x₂] with k = 3 are those of
    k = 1 over [x₁, x₁, x₁, x₂, x₂, x₂] (the same draws, in the same order); Ā does not change."""
    model = Tiny(out=4).double() if isinstance(likelihood, Categorical) else Tokens().double()
    shape = (4, 2, 6, 6) if isinstance(likelihood, Categorical) else (3, 4, 7)
    xs = [torch.randn(*shape, dtype=F64) for _ in range(2)]
    curv = ModelCurvature(model, find_layers(model), likelihood)
    drawn = curv.statistics(iter(xs), 2, kfac=True, generator=torch.Generator().manual_seed(3), label_samples=3)
    repeated = [x for x in xs for _ in range(3)]
    once = curv.statistics(iter(repeated), 6, kfac=True, generator=torch.Generator().manual_seed(3))
    single = curv.statistics(iter(xs), 2, kfac=True, generator=torch.Generator().manual_seed(3))
    for d, o, s in zip(drawn, once, single):
        torch.testing.assert_close(d.act_cov, o.act_cov, rtol=1e-12, atol=0)
        torch.testing.assert_close(d.grad_cov, o.grad_cov, rtol=1e-12, atol=0)
        torch.testing.assert_close(d.diag, o.diag, rtol=1e-12, atol=0)
        torch.testing.assert_close(d.act_cov, s.act_cov, rtol=1e-12, atol=0)
        assert not torch.allclose(d.grad_cov, s.grad_cov), "the other draws count"
    for bad in (0, -1, True, 2.0):
        with pytest.raises(ValueError, match="label_samples"):
            curv.statistics(iter(xs), 1, kfac=True, label_samples=bad)
    with pytest.raises(ValueError, match="label_samples"):
        curv.statistics(iter(xs), 1, kfac=True, captures=[], label_samples=2)
