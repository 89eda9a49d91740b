"""The matrix view: W·patches reproduces the layer, split/write round-trip, layer discovery."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from fls_kernels.layers import LayerView, find_layers

CONVS = [
    pytest.param(dict(in_channels=3, out_channels=5, kernel_size=3), id="plain"),
    pytest.param(dict(in_channels=3, out_channels=4, kernel_size=3, bias=False), id="no-bias"),
    pytest.param(dict(in_channels=4, out_channels=6, kernel_size=(2, 3), stride=2, padding=1), id="stride-pad"),
    pytest.param(dict(in_channels=4, out_channels=6, kernel_size=3, dilation=2, padding="same"), id="dilated-same"),
    pytest.param(dict(in_channels=6, out_channels=4, kernel_size=3, groups=2, padding=1), id="groups"),
    pytest.param(dict(in_channels=2, out_channels=3, kernel_size=3, padding=1, padding_mode="reflect"), id="reflect"),
    pytest.param(dict(in_channels=2, out_channels=3, kernel_size=2, padding="valid"), id="valid"),
]


@pytest.mark.parametrize("kwargs", CONVS)
def test_conv_patches_times_matrix_is_the_conv(kwargs):
    conv = nn.Conv2d(**kwargs).double()
    view = LayerView(conv, "conv")
    x = torch.randn(2, conv.in_channels, 7, 9, dtype=torch.float64)
    y = conv(x)  # [B, C, H, W]
    a = view.patches(x)  # [B, g, T, n]
    W = view.matrix().reshape(view.groups, view.m // view.groups, view.n)
    out = torch.einsum("bgtn,gmn->bgtm", a, W)  # per group
    expected = view.output_grads(y)  # same [B, g, T, m/g] layout as gradients w.r.t. the output
    torch.testing.assert_close(out, expected)


@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("shape", [(5, 4), (2, 3, 4)], ids=["2d", "3d-tokens"])
def test_linear_patches_times_matrix_is_the_layer(bias, shape):
    lin = nn.Linear(4, 3, bias=bias).double()
    view = LayerView(lin, "lin")
    x = torch.randn(*shape, dtype=torch.float64)
    a = view.patches(x)
    assert view.n == 4 + bias
    out = a @ view.matrix().T
    torch.testing.assert_close(out, view.output_grads(lin(x)))


def test_matrix_split_write_round_trip():
    conv = nn.Conv2d(3, 4, 3)
    view = LayerView(conv, "c")
    W = torch.randn(view.m, view.n)
    view.write(W)
    torch.testing.assert_close(view.matrix(), W)
    assert conv.weight.shape == (4, 3, 3, 3)
    torch.testing.assert_close(conv.bias.detach(), W[:, -1])


def test_find_layers_filters_by_type_regex_and_ignore():
    inner = nn.Sequential(nn.Linear(2, 3), nn.Linear(3, 4))
    model = nn.Sequential(nn.Conv2d(1, 2, 3), nn.ReLU(), inner, nn.LayerNorm(4))
    assert [v.name for v in find_layers(model)] == ["0", "2.0", "2.1"]
    assert [v.name for v in find_layers(model, layer_types=(nn.Linear,))] == ["2.0", "2.1"]
    assert [v.name for v in find_layers(model, include=r"2\..*", ignore=(r"2\.1",))] == ["2.0"]
    assert all(not v.has_bias for v in find_layers(model, include_bias=False))


def test_unsupported_module_is_a_type_error():
    with pytest.raises(TypeError, match="module"):
        LayerView(nn.LayerNorm(3), "ln")
