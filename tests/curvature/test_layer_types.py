"""Matrix views of Conv1d, ConvTranspose1d/2d and GPT-2's Conv1D against their definitions (float64): W·patches is
the layer, the parameter ↔ matrix maps are inverse permutations, per-sample gradients Σ_t δ aᵀ are autograd's,
and ModelCurvature's FVP, diagonal and K-FAC statistics equal dense per-sample-Jacobian definitions."""

from __future__ import annotations

import math
import subprocess
import sys

import pytest
import torch
from torch import nn

import fls_kernels as fls
from fls_kernels.curvature import Categorical, ModelCurvature
from fls_kernels.layers import LayerView, find_layers
from fls_kernels.layers import views as layers_module
from fls_kernels.layers.views import SUPPORTED_LAYERS, GPT2Conv1D, is_gpt2_conv1d
from tests.jacobians import layer_jacobian
from tests.pruning.helpers import expected_zeros, loader

F64 = torch.float64


def gpt2_conv1d(nf: int, nx: int) -> nn.Module:
    pytorch_utils = pytest.importorskip("transformers.pytorch_utils")
    layer = pytorch_utils.Conv1D(nf, nx)
    nn.init.normal_(layer.bias)  # transformers starts it at zero
    return layer


#: (module factory, input shape); sizes odd on purpose
CASES = [
    pytest.param(lambda: nn.Conv1d(3, 5, 3), (2, 3, 11), id="conv1d-plain"),
    pytest.param(
        lambda: nn.Conv1d(5, 4, 3, stride=2, dilation=2, padding=3, bias=False), (2, 5, 13), id="conv1d-stride-dil-pad"
    ),
    pytest.param(
        lambda: nn.Conv1d(6, 9, 4, groups=3, dilation=2, padding="same", padding_mode="reflect"),
        (2, 6, 12),
        id="conv1d-groups-same-reflect",
    ),
    pytest.param(
        lambda: nn.Conv1d(3, 6, 3, groups=3, padding=2, padding_mode="circular", bias=False),
        (3, 3, 7),
        id="conv1d-depthwise-circular",
    ),
    pytest.param(lambda: nn.Conv1d(4, 3, 2, stride=3, padding="valid"), (2, 4, 10), id="conv1d-valid-stride3"),
    pytest.param(lambda: nn.Conv1d(2, 3, 5, padding=1, padding_mode="replicate"), (2, 2, 8), id="conv1d-replicate"),
    pytest.param(lambda: nn.ConvTranspose1d(3, 5, 3), (2, 3, 7), id="convT1d-plain"),
    pytest.param(
        lambda: nn.ConvTranspose1d(4, 6, 3, stride=2, padding=1, output_padding=1, groups=2),
        (2, 4, 7),
        id="convT1d-stride-outpad-groups",
    ),
    pytest.param(
        lambda: nn.ConvTranspose1d(3, 5, 4, stride=3, padding=4, output_padding=2, dilation=2, bias=False),
        (2, 3, 6),
        id="convT1d-crop-dilation-no-bias",
    ),
    pytest.param(lambda: nn.ConvTranspose2d(3, 5, 3, padding=1), (2, 3, 5, 4), id="convT2d-plain"),
    pytest.param(
        lambda: nn.ConvTranspose2d(
            6, 9, (2, 3), stride=(2, 3), padding=(1, 2), output_padding=(1, 0), groups=3, dilation=(2, 1)
        ),
        (2, 6, 5, 4),
        id="convT2d-groups-stride-dil-outpad",
    ),
    pytest.param(
        lambda: nn.ConvTranspose2d(5, 3, 3, stride=2, padding=1, output_padding=1, bias=False),
        (2, 5, 4, 3),
        id="convT2d-stride2-no-bias",
    ),
    pytest.param(lambda: gpt2_conv1d(7, 5), (2, 3, 5), id="gpt2-conv1d-tokens"),
    pytest.param(lambda: gpt2_conv1d(4, 6), (3, 6), id="gpt2-conv1d-2d"),
]


def make(factory, seed=0):
    torch.manual_seed(seed)
    return factory().double()


def expected_mn(module: nn.Module, bias: bool) -> tuple[int, int]:
    """(m, n) as the module docstring defines them."""
    if is_gpt2_conv1d(module):
        return module.nf, module.nx + bias
    k = math.prod(module.kernel_size)
    return module.out_channels, module.in_channels // module.groups * k + bias


def layer_output(view: LayerView, out, like: torch.Tensor) -> torch.Tensor:
    """[B, g, T, m/g] per-location outputs → the layer's output layout (``like``'s shape)."""
    if view.kind in ("linear", "linear_t"):
        return out.reshape(like.shape)
    B, g, T, k = out.shape
    return out.transpose(2, 3).reshape(like.shape)


def full_matrix(view: LayerView, blocks: torch.Tensor) -> torch.Tensor:
    """[..., g, m/g, n] group blocks → [..., m, n] (row γ·m/g + o)."""
    return blocks.reshape(*blocks.shape[:-3], view.m, blocks.shape[-1])


def transposed_matrix_by_definition(conv: nn.Module) -> torch.Tensor:
    """W[γ·c_out/g + o, (c, j)] = w[γ·c_in/g + c, o, k−1−j], entry by entry."""
    w = conv.weight.detach()
    g, cig, cog, k = conv.groups, w.shape[0] // conv.groups, w.shape[1], tuple(w.shape[2:])
    W = torch.empty(conv.out_channels, cig * math.prod(k), dtype=w.dtype)
    for gamma in range(g):
        for o in range(cog):
            for c in range(cig):
                for flat, j in enumerate(torch.cartesian_prod(*[torch.arange(n) for n in k]).reshape(-1, len(k))):
                    src = tuple(n - 1 - int(i) for n, i in zip(k, j))
                    W[gamma * cog + o, c * math.prod(k) + flat] = w[(gamma * cig + c, o, *src)]
    return W


# ---------------------------------------------------------------------------------------------- (a) the layer
@pytest.mark.parametrize("include_bias", [True, False], ids=["bias-col", "no-bias-col"])
@pytest.mark.parametrize("factory, shape", CASES)
def test_patches_times_matrix_is_the_layer(factory, shape, include_bias):
    module = make(factory)
    view = LayerView(module, "layer", include_bias=include_bias)
    has_bias = include_bias and module.bias is not None
    assert (view.m, view.n) == expected_mn(module, has_bias)
    x = torch.randn(*shape, dtype=F64)
    y = module(x)
    if not has_bias and module.bias is not None:  # the matrix leaves the bias out: add it per output channel
        bias = module.bias.detach()
        y = y - (bias if view.kind == "linear_t" else bias.reshape(-1, *[1] * (y.dim() - 2)))
    a = view.patches(x)
    B, g, T, n = a.shape
    assert (g, n) == (view.groups, view.n) and B == shape[0]
    W = view.matrix().reshape(g, view.m // g, view.n)
    out = torch.einsum("bgtn,gmn->bgtm", a, W)
    torch.testing.assert_close(layer_output(view, out, y), y, rtol=0, atol=1e-10)
    torch.testing.assert_close(view.output_grads(y), out, rtol=0, atol=1e-10)


# ---------------------------------------------------------------------------------------------- (b) the layout
@pytest.mark.parametrize("factory, shape", CASES)
def test_parameter_matrix_maps_are_inverse_permutations(factory, shape):
    module = make(factory)
    view = LayerView(module, "layer")
    w = module.weight
    ids = torch.arange(w.numel(), dtype=F64).reshape(w.shape)
    M = view.weight_matrix(ids)
    assert M.shape == (view.m, view.n_weight)
    assert torch.equal(M.reshape(-1).sort().values, ids.reshape(-1))  # a permutation of the entries
    assert torch.equal(view.matrix_weight(M), ids)
    R = torch.randn(view.m, view.n_weight, dtype=F64)
    assert torch.equal(view.weight_matrix(view.matrix_weight(R)), R)
    mask = torch.rand(w.shape) < 0.5  # bool masks (MaskState) take the same maps
    assert torch.equal(view.matrix_weight(view.weight_matrix(mask)), mask)
    batched = torch.randn(3, *w.shape, dtype=F64)  # leading dims (per-sample gradients)
    assert torch.equal(view.weight_matrix(batched)[1], view.weight_matrix(batched[1]))
    assert torch.equal(view.matrix_weight(view.weight_matrix(batched)), batched)
    if view.kind == "linear_t":
        assert torch.equal(view.matrix()[:, : view.n_weight], w.detach().T)
    elif view.kind == "conv_t":
        assert torch.equal(view.matrix()[:, : view.n_weight], transposed_matrix_by_definition(module))
    else:
        assert torch.equal(view.matrix()[:, : view.n_weight], w.detach().reshape(view.m, -1))


@pytest.mark.parametrize("factory, shape", CASES)
def test_split_write_round_trip_changes_the_layer(factory, shape):
    module = make(factory)
    view = LayerView(module, "layer")
    W = torch.randn(view.m, view.n, dtype=F64)
    parts = view.split(W)
    assert [p.shape for p in parts] == [p.shape for p in view.parameters().values()]
    assert torch.equal(view.to_matrix(parts), W)
    view.write(W)
    assert torch.equal(view.matrix(), W)
    assert torch.equal(module.weight.detach(), view.matrix_weight(W[:, : view.n_weight]))
    if view.has_bias:
        assert torch.equal(module.bias.detach(), W[:, -1])
    x = torch.randn(*shape, dtype=F64)  # the module now computes with W
    g = view.groups
    out = torch.einsum("bgtn,gmn->bgtm", view.patches(x), W.reshape(g, view.m // g, view.n))
    y = module(x)
    torch.testing.assert_close(layer_output(view, out, y), y, rtol=0, atol=1e-10)


# ---------------------------------------------------------------------------------------------- (c) gradients
@pytest.mark.parametrize("factory, shape", CASES)
def test_per_sample_gradient_from_patches_is_autograds(factory, shape):
    module = make(factory)
    view = LayerView(module, "layer")
    x = torch.randn(*shape, dtype=F64)
    r = torch.randn_like(module(x))  # d loss / d output
    a, d = view.patches(x), view.output_grads(r)
    mine = full_matrix(view, torch.einsum("bgtm,bgtn->bgmn", d, a))  # [B, m, n]
    params = list(view.parameters().values())
    for b in range(shape[0]):
        loss = (module(x[b : b + 1]) * r[b : b + 1]).sum()
        grads = torch.autograd.grad(loss, params)
        torch.testing.assert_close(mine[b], view.to_matrix(list(grads)), rtol=0, atol=1e-10)


# ---------------------------------------------------------------------------------------------- (d) curvature
class Tiny(nn.Module):
    """The layer, tanh, then a linear head over its flattened output."""

    def __init__(self, layer: nn.Module, shape: tuple[int, ...], classes: int = 3) -> None:
        super().__init__()
        self.layer = layer
        with torch.no_grad():
            size = layer(torch.zeros(*shape, dtype=F64)).reshape(shape[0], -1).shape[1]
        self.head = nn.Linear(size, classes).double()

    def forward(self, x):
        return self.head(torch.tanh(self.layer(x)).reshape(x.shape[0], -1))


def softmax_hessian(out):
    p = torch.softmax(out, -1)
    return torch.diag_embed(p) - p[:, :, None] * p[:, None, :]


@pytest.mark.parametrize("factory, shape", CASES)
def test_fvp_equals_dense_fisher(factory, shape):
    model = Tiny(make(factory), shape)
    views = find_layers(model)
    assert [v.name for v in views] == ["layer", "head"]
    x = torch.randn(*shape, dtype=F64)
    out, J = layer_jacobian(model, views, x)  # [B, k, d] over the row-major matrices
    F = torch.einsum("bkd,bkl,ble->de", J, softmax_hessian(out), J) / out.shape[0]
    vs = [torch.randn(v.m, v.n, dtype=F64) for v in views]
    got = torch.cat([g.reshape(-1) for g in ModelCurvature(model, views, Categorical()).fvp(x, vs)])
    torch.testing.assert_close(got, F @ torch.cat([v.reshape(-1) for v in vs]))


@pytest.mark.parametrize("factory, shape", CASES)
def test_statistics_equal_per_sample_definitions(factory, shape):
    model = Tiny(make(factory), shape)
    views = find_layers(model)
    lik = Categorical()
    xs = [torch.randn(*shape, dtype=F64) for _ in range(2)]
    stats = ModelCurvature(model, views, lik).statistics(
        iter(xs), 2, kfac=True, generator=torch.Generator().manual_seed(5)
    )
    layer, view = model.layer, views[0]
    gen = torch.Generator().manual_seed(5)
    diag = torch.zeros(view.m, view.n, dtype=F64)
    act = torch.zeros(view.n, view.n, dtype=F64)
    grad = torch.zeros(view.m, view.m, dtype=F64)
    count = 0
    for x in xs:
        with torch.no_grad():
            y = lik.sample(model(x), gen)
        out, J = layer_jacobian(model, views, x)
        # per-sample sampled-label gradients g_b = J_bᵀ ∇_f nll(f_b, y_b), the layer's [m, n] part
        r = torch.softmax(out, -1) - nn.functional.one_hot(y, out.shape[1]).to(F64)
        g = torch.einsum("bkd,bk->bd", J, r)[:, : view.m * view.n].reshape(-1, view.m, view.n)
        diag += (g**2).sum(0)
        for b in range(x.shape[0]):
            cache = {}
            hook = layer.register_forward_hook(lambda mod, args, o: cache.update(x=args[0], y=o))
            loss = lik.nll(model(x[b : b + 1]), y[b : b + 1]).sum()
            hook.remove()
            (dy,) = torch.autograd.grad(loss, [cache["y"]])
            # δ_t ∈ ℝᵐ per output location t, read straight off the layer's output layout
            d = dy.reshape(-1, view.m) if view.kind == "linear_t" else dy[0].reshape(view.m, -1).T
            grad += d.T @ d
            a = view.patches(cache["x"].detach())[0]  # [g, T, n]
            a = a.reshape(-1, view.n)
            act += a.T @ a / a.shape[0]
            count += 1
    s = stats[0]
    assert s.diag.shape == (view.m, view.n) and s.act_cov.shape == (view.n, view.n)
    assert s.grad_cov.shape == (view.m, view.m)
    torch.testing.assert_close(s.diag, diag / count)
    torch.testing.assert_close(s.act_cov, act / count)
    torch.testing.assert_close(s.grad_cov, grad / count)


# ---------------------------------------------------------------------------------------------- discovery
def test_find_layers_finds_the_new_types_and_filters_them():
    transformers = pytest.importorskip("transformers.pytorch_utils")
    model = nn.ModuleDict(
        {
            "c1": nn.Conv1d(2, 3, 3),
            "t1": nn.ConvTranspose1d(3, 2, 3),
            "t2": nn.ConvTranspose2d(2, 2, 2),
            "gpt": transformers.Conv1D(4, 3),
            "fc": nn.Linear(2, 2),
            "ln": nn.LayerNorm(2),
            "c2": nn.Conv2d(1, 1, 1),
        }
    )
    assert [v.name for v in find_layers(model)] == ["c1", "t1", "t2", "gpt", "fc", "c2"]
    assert [v.name for v in find_layers(model, layer_types=(nn.Conv1d, nn.Linear))] == ["c1", "fc"]
    assert [v.name for v in find_layers(model, layer_types=(GPT2Conv1D,))] == ["gpt"]
    assert [v.name for v in find_layers(model, layer_types=(transformers.Conv1D,))] == ["gpt"]
    assert [v.name for v in find_layers(model, layer_types=(nn.ConvTranspose1d, nn.ConvTranspose2d))] == ["t1", "t2"]
    assert isinstance(model["gpt"], SUPPORTED_LAYERS) and not isinstance(model["c1"], GPT2Conv1D)
    assert issubclass(transformers.Conv1D, GPT2Conv1D) and not issubclass(nn.Conv1d, GPT2Conv1D)


def test_gpt2_conv1d_is_recognised_by_shape_without_transformers():
    class Conv1D(nn.Module):  # a look-alike: class name, nf and a weight [nx, nf]
        def __init__(self):
            super().__init__()
            self.nf, self.nx = 4, 3
            self.weight = nn.Parameter(torch.randn(3, 4))
            self.bias = nn.Parameter(torch.randn(4))

        def forward(self, x):
            return x @ self.weight + self.bias

    class Other(Conv1D):
        pass

    Other.__name__ = "Other"
    assert isinstance(Conv1D(), GPT2Conv1D) and not isinstance(Other(), GPT2Conv1D)
    view = LayerView(Conv1D(), "c")
    assert (view.m, view.n) == (4, 4)
    with pytest.raises(TypeError, match="stands for"):
        GPT2Conv1D()


def test_importing_fls_kernels_does_not_import_transformers():
    code = "import sys, fls_kernels, fls_kernels.curvature, fls_kernels.pruning; print('transformers' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_transposed_conv_with_another_padding_mode_is_refused():
    conv = nn.ConvTranspose2d(2, 3, 3)
    conv.padding_mode = "reflect"  # torch refuses it at construction; a later change is refused here
    with pytest.raises(ValueError, match=r"module: up is a ConvTranspose2d.*padding_mode='reflect'"):
        LayerView(conv, "up")


def test_module_docstring_lists_every_supported_type():
    doc = layers_module.__doc__
    names = ["Linear", "GPT-2 Conv1D", "Conv1d", "Conv2d", "ConvTranspose1d", "ConvTranspose2d", "MultiheadAttention"]
    assert [t.__name__ for t in SUPPORTED_LAYERS] == ["Linear", "GPT2Conv1D", *names[2:]]
    for name in names:
        assert f"\n{name} " in doc, name


# ---------------------------------------------------------------------------------------------- pruning
class MixedNet(nn.Module):
    """Conv1d → ConvTranspose2d → GPT-2 Conv1D over tokens → Linear, on the pruning tests' [B, 1, 6, 6] inputs."""

    def __init__(self):
        super().__init__()
        transformers = pytest.importorskip("transformers.pytorch_utils")
        self.conv = nn.Conv1d(1, 3, 3, stride=2, padding=1)  # [B, 1, 36] → [B, 3, 18]
        self.up = nn.ConvTranspose2d(3, 4, 3, stride=2, padding=1, output_padding=1)  # [B, 3, 3, 6] → [B, 4, 6, 12]
        self.attn = transformers.Conv1D(8, 48)  # [B, 6, 48] → [B, 6, 8]
        self.fc = nn.Linear(48, 5)

    def forward(self, x):
        B = x.shape[0]
        h = torch.relu(self.conv(x.reshape(B, 1, 36))).reshape(B, 3, 3, 6)
        h = torch.relu(self.up(h)).permute(0, 2, 1, 3).reshape(B, 6, 48)
        return self.fc(torch.tanh(self.attn(h)).reshape(B, 48))


@pytest.mark.parametrize(
    "make_pruner",
    [
        pytest.param(lambda m: fls.FishLegPruner(m, refine_steps=2, init_batches=2), id="fls"),
        pytest.param(lambda m: fls.OBERTPruner(m, num_grads=24, block_size=16), id="obert"),
        pytest.param(lambda m: fls.MagnitudePruner(m), id="magnitude"),
    ],
)
def test_pruning_a_model_of_the_new_types_is_exact(make_pruner):
    torch.manual_seed(0)
    model = MixedNet()
    pruner = make_pruner(model)
    assert pruner.layer_names == ["conv", "up", "attn", "fc"]
    pruner.fit(loader(), steps=2)
    pruner.prune(0.5)
    zeros = 0
    for v in pruner.views:
        w, mask = v.weight.detach(), pruner.masks[v.name]
        assert mask.shape == w.shape and bool(torch.isfinite(w).all()), v.name
        assert (w[~mask] == 0).all() and (w[mask] != 0).all(), v.name
        zeros += int((w == 0).sum())
        assert all(bool(torch.isfinite(p).all()) for p in v.parameters().values()), v.name
    assert zeros == pruner.num_pruned() == expected_zeros(pruner, 0.5)
    x = loader()[0][0]
    assert bool(torch.isfinite(model(x)).all())


def test_magnitude_pruning_removes_the_smallest_entries_of_every_layout():
    torch.manual_seed(1)
    model = MixedNet()
    pruner = fls.MagnitudePruner(model)
    pruner.fit(loader(), steps=1)
    before = torch.cat([v.weight.detach().abs().reshape(-1) for v in pruner.views])
    pruner.prune(0.5)
    mask = torch.cat([pruner.masks[v.name].reshape(-1) for v in pruner.views])
    k = expected_zeros(pruner, 0.5)
    assert int((~mask).sum()) == k
    assert before[~mask].max() <= before[mask].min()
