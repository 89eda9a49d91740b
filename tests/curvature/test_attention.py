"""nn.MultiheadAttention's projections as layers: the step-by-step forward equals PyTorch's, the packed
in-projection is one [3d, d] matrix, and curvature through attention (either J v route) equals its definition."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from fls_kernels.curvature import Categorical, ModelCurvature
from fls_kernels.layers import find_layers
from fls_kernels.layers.attention import attention_forward, unfused
from tests.curvature.test_fisher import dense_fisher

F64 = torch.float64


@pytest.mark.parametrize("batch_first", [True, False])
@pytest.mark.parametrize(
    "masks", ["none", "padding", "bool mask", "float mask", "causal", "both"], ids=lambda s: s.replace(" ", "-")
)
def test_attention_forward_equals_pytorch(batch_first, masks):
    torch.manual_seed(0)
    m = nn.MultiheadAttention(12, 3, batch_first=batch_first).double().eval()
    B, T = 3, 7
    x = torch.randn(B, T, 12, dtype=F64)
    x = x if batch_first else x.transpose(0, 1).contiguous()
    pad = torch.zeros(B, T, dtype=torch.bool)
    pad[1, 4:] = True
    causal = torch.triu(torch.ones(T, T, dtype=torch.bool), 1)
    kw = {
        "none": {},
        "padding": dict(key_padding_mask=pad),
        "bool mask": dict(attn_mask=causal),
        "float mask": dict(attn_mask=torch.randn(T, T, dtype=F64)),
        "causal": dict(attn_mask=causal, is_causal=True),
        "both": dict(attn_mask=causal, key_padding_mask=pad, average_attn_weights=False),
    }[masks]
    with torch.no_grad():
        want, want_w = m(x, x, x, **kw)
        got, got_w = attention_forward(m, x, x, x, **kw)
    torch.testing.assert_close(got, want)
    torch.testing.assert_close(got_w, want_w)
    assert attention_forward(m, x, x, x, need_weights=False, **kw)[1] is None


def test_unfused_restores_the_module_and_the_fast_path():
    enc = nn.TransformerEncoder(nn.TransformerEncoderLayer(8, 2, 16, batch_first=True), 2, enable_nested_tensor=False)
    enc = enc.double().eval()
    x = torch.randn(2, 5, 8, dtype=F64)
    with torch.no_grad():
        want = enc(x)
        with unfused(enc):
            assert not torch.backends.mha.get_fastpath_enabled()
            got = enc(x)
    torch.testing.assert_close(got, want)
    assert torch.backends.mha.get_fastpath_enabled()
    assert all("forward" not in m.__dict__ for m in enc.modules())


def test_cross_attention_in_projection_is_refused():
    m = nn.MultiheadAttention(4, 2, batch_first=True)
    q, kv = torch.randn(2, 3, 4), torch.randn(2, 5, 4)
    with pytest.raises(ValueError, match="self-attention only"):
        attention_forward(m, q, kv, kv)


class Encoder(nn.Module):
    def __init__(self, act: nn.Module | None = None):
        super().__init__()
        self.inp = nn.Linear(3, 8)
        self.layer = nn.TransformerEncoderLayer(8, 2, 10, dropout=0.2, batch_first=True)
        self.act = act or nn.Identity()
        self.head = nn.Linear(8, 3)

    def forward(self, x):
        return self.head(self.act(self.layer(self.inp(x))).mean(1))


def test_views_of_a_transformer_layer():
    model = Encoder()
    views = {v.name: v for v in find_layers(model)}
    assert list(views) == ["inp", "layer.self_attn.in_proj", "layer.self_attn.out_proj", "layer.linear1",
                           "layer.linear2", "head"]  # fmt: skip
    packed = views["layer.self_attn.in_proj"]
    assert (packed.m, packed.n) == (24, 9)
    assert list(packed.parameters()) == ["layer.self_attn.in_proj_weight", "layer.self_attn.in_proj_bias"]
    assert packed.weight_key == "layer.self_attn.in_proj_weight"
    W = torch.randn(24, 9)
    packed.write(W)
    torch.testing.assert_close(model.layer.self_attn.in_proj_weight.detach(), W[:, :8])
    torch.testing.assert_close(model.layer.self_attn.in_proj_bias.detach(), W[:, 8])
    assert set(model.state_dict()) == set(Encoder().state_dict()), "the views add nothing to the model's state"
    assert [v.name for v in find_layers(model, ignore=(r".*in_proj",))].count("layer.self_attn.in_proj") == 0
    attention = nn.MultiheadAttention(4, 2)  # an attention that is the model itself
    (root, _) = find_layers(attention)
    assert (root.name, list(root.parameters())) == ("in_proj", ["in_proj_weight", "in_proj_bias"])


@pytest.mark.parametrize("mode", ["jvp", "double_vjp", "auto"])
def test_fvp_through_attention_equals_dense_fisher(mode):
    torch.manual_seed(1)
    model = Encoder().double()
    views, lik = find_layers(model), Categorical()
    x = torch.randn(4, 5, 3, dtype=F64)
    vs = [torch.randn(v.m, v.n, dtype=F64) for v in views]
    curv = ModelCurvature(model, views, lik, fvp_mode=mode)
    got = torch.cat([p.reshape(-1) for p in curv.fvp(x, vs)])
    torch.testing.assert_close(got, dense_fisher(model, views, lik, x) @ torch.cat([v.reshape(-1) for v in vs]))
    assert curv.fvp_mode == mode, "auto keeps forward mode where every op has it"


def test_statistics_through_attention_equal_per_sample_gradients():
    torch.manual_seed(2)
    model = Encoder().double()
    views, lik = find_layers(model), Categorical()
    xs = [torch.randn(3, 4, 3, dtype=F64) for _ in range(2)]
    stats = ModelCurvature(model, views, lik).statistics(
        iter(xs), 2, kfac=False, generator=torch.Generator().manual_seed(3)
    )
    gen, count = torch.Generator().manual_seed(3), 0
    diag = [0] * len(views)
    model.eval()
    for x in xs:
        with torch.no_grad():
            y = lik.sample(model(x), gen)
        for b in range(x.shape[0]):
            params = [p for v in views for p in v.parameters().values()]
            grads = iter(torch.autograd.grad(lik.nll(model(x[b : b + 1]), y[b : b + 1]).sum(), params))
            for i, v in enumerate(views):
                diag[i] = diag[i] + v.to_matrix([next(grads) for _ in v.parameters()]) ** 2
            count += 1
    for v, s, d in zip(views, stats, diag):
        torch.testing.assert_close(s.diag, d / count, msg=v.name)
        assert s.diag.sum() > 0, v.name


class _NoForwardAD(torch.autograd.Function):
    """x·tanh(x) with a backward but no jvp: forward-mode AD cannot pass it."""

    @staticmethod
    def forward(x):
        return x * torch.tanh(x)

    @staticmethod
    def setup_context(ctx, inputs, output):
        ctx.save_for_backward(inputs[0])

    @staticmethod
    def backward(ctx, g):
        (x,) = ctx.saved_tensors
        t = torch.tanh(x)
        return g * (t + x * (1 - t * t))


class NoForwardAD(nn.Module):
    def forward(self, x):
        return _NoForwardAD.apply(x)


def test_an_op_without_forward_mode_falls_back_to_reverse_over_reverse():
    torch.manual_seed(4)
    model = Encoder(NoForwardAD()).double()
    views, lik = find_layers(model), Categorical()
    x = torch.randn(3, 5, 3, dtype=F64)
    vs = [torch.randn(v.m, v.n, dtype=F64) for v in views]
    with pytest.raises(NotImplementedError):
        ModelCurvature(model, views, lik, fvp_mode="jvp").fvp(x, vs)
    curv = ModelCurvature(model, views, lik)
    got = torch.cat([p.reshape(-1) for p in curv.fvp(x, vs)])
    assert curv.fvp_mode == "double_vjp"
    torch.testing.assert_close(got, dense_fisher(model, views, lik, x) @ torch.cat([v.reshape(-1) for v in vs]))
    with pytest.raises(ValueError, match="fvp_mode"):
        ModelCurvature(model, views, lik, fvp_mode="forward")


@pytest.mark.parametrize("math_sdpa", [True, False])
def test_unfused_forces_the_math_sdpa_backend_only_when_asked(math_sdpa):
    from torch.nn.attention import SDPBackend, _cur_sdpa_kernel_backends

    model = nn.TransformerEncoderLayer(8, 2, 16, batch_first=True)
    before = list(_cur_sdpa_kernel_backends())
    with unfused(model, math_sdpa=math_sdpa):
        inside = list(_cur_sdpa_kernel_backends())
    assert (inside == [SDPBackend.MATH]) == math_sdpa
    assert len(inside) > 1 or math_sdpa
    assert list(_cur_sdpa_kernel_backends()) == before


def test_statistics_of_a_transformers_bert_do_not_depend_on_the_sdpa_backend():
    """First-order passes keep the fused attention kernels: the same statistics as under the math backend."""
    transformers = pytest.importorskip("transformers")
    from torch.nn.attention import SDPBackend, sdpa_kernel

    torch.manual_seed(0)
    config = transformers.BertConfig(
        vocab_size=40, hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32,
        max_position_embeddings=16, attn_implementation="sdpa",
    )  # fmt: skip
    model = transformers.BertModel(config, add_pooling_layer=False).eval()
    views = find_layers(model)
    batch = {"input_ids": torch.randint(0, 40, (6, 9)), "attention_mask": torch.ones(6, 9, dtype=torch.long)}
    batch["attention_mask"][:2, 6:] = 0

    def stats():
        from fls_kernels.curvature import Gaussian

        curvature = ModelCurvature(model, views, Gaussian(1.0))
        return curvature.statistics(iter([batch]), 1, kfac=True, generator=torch.Generator().manual_seed(3))

    fused = stats()
    with sdpa_kernel([SDPBackend.MATH]):
        math = stats()
    for a, b in zip(fused, math):
        torch.testing.assert_close(a.diag, b.diag, rtol=1e-4, atol=1e-9)
        torch.testing.assert_close(a.act_cov, b.act_cov, rtol=1e-4, atol=1e-9)
        torch.testing.assert_close(a.grad_cov, b.grad_cov, rtol=1e-4, atol=1e-9)
