"""The matrix view of a prunable layer: W ∈ ℝ^{m×n} with the bias folded in as the last column.

Linear: m = out_features, n = in_features (+1). Conv2d: m = out_channels, n = (in_channels/groups)·kh·kw (+1).
The same view gives the layer's inputs as patches a ∈ ℝⁿ (with a trailing 1 for the bias), which the
K-FAC factors and per-sample gradients are built from.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

#: Layer types the curvature floor knows how to view as matrices.
SUPPORTED_LAYERS: tuple[type[nn.Module], ...] = (nn.Linear, nn.Conv2d)


class LayerView:
    """A prunable layer seen as one matrix.

    Args:
        module: an ``nn.Linear`` or ``nn.Conv2d``.
        name: its qualified name in the model.
        include_bias: fold the bias (when present) into the matrix as the last column.
    """

    def __init__(self, module: nn.Module, name: str, include_bias: bool = True) -> None:
        if not isinstance(module, SUPPORTED_LAYERS):
            raise TypeError(
                f"module: {name or type(module).__name__} is a {type(module).__name__}, "
                f"expected one of {[t.__name__ for t in SUPPORTED_LAYERS]}"
            )
        self.module = module
        self.name = name
        self.has_bias = include_bias and getattr(module, "bias", None) is not None
        weight = module.weight
        self.m = weight.shape[0]
        self.n_weight = weight[0].numel()
        self.groups = getattr(module, "groups", 1)

    @property
    def n(self) -> int:
        """Columns of the matrix: the weight's fan-in, plus one for a folded bias."""
        return self.n_weight + int(self.has_bias)

    @property
    def weight(self) -> nn.Parameter:
        return self.module.weight

    def parameters(self) -> dict[str, nn.Parameter]:
        """The parameters the matrix covers, keyed by their qualified names in the model."""
        prefix = f"{self.name}." if self.name else ""
        params = {f"{prefix}weight": self.module.weight}
        if self.has_bias:
            params[f"{prefix}bias"] = self.module.bias
        return params

    def matrix(self, dtype: torch.dtype | None = None) -> Tensor:
        """The layer as a new contiguous [m, n] tensor (weight columns, then the bias)."""
        return self.to_matrix([p.detach() for p in self.parameters().values()], dtype)

    def to_matrix(self, tensors: list[Tensor], dtype: torch.dtype | None = None) -> Tensor:
        """[weight-shaped, (bias-shaped)] → [m, n]."""
        cols = [tensors[0].reshape(self.m, self.n_weight)]
        if self.has_bias:
            cols.append(tensors[1].reshape(self.m, 1))
        out = torch.cat(cols, dim=1)
        return out if dtype is None else out.to(dtype)

    def split(self, W: Tensor) -> list[Tensor]:
        """[m, n] → [weight-shaped, (bias-shaped)] tensors in the parameters' dtype."""
        dtype = self.module.weight.dtype
        parts = [W[:, : self.n_weight].reshape(self.module.weight.shape).to(dtype)]
        if self.has_bias:
            parts.append(W[:, self.n_weight].to(dtype))
        return parts

    @torch.no_grad()
    def write(self, W: Tensor) -> None:
        """Copy an [m, n] matrix back into the layer's parameters."""
        for p, value in zip(self.parameters().values(), self.split(W)):
            p.copy_(value)

    def patches(self, x: Tensor) -> Tensor:
        """The layer input as patches: [B, groups, T, n] (T locations/tokens per sample; trailing 1 for bias)."""
        module = self.module
        if isinstance(module, nn.Linear):
            a = x.reshape(x.shape[0], 1, -1, x.shape[-1])
        else:
            a = _conv_patches(module, x)  # [B, g, T, n_weight]
        if self.has_bias:
            a = torch.cat([a, a.new_ones(*a.shape[:-1], 1)], dim=-1)
        return a

    def output_grads(self, grad_out: Tensor) -> Tensor:
        """The gradient w.r.t. the layer output as [B, groups, T, m/groups]."""
        if isinstance(self.module, nn.Linear):
            return grad_out.reshape(grad_out.shape[0], 1, -1, grad_out.shape[-1])
        B, C = grad_out.shape[:2]
        g = self.groups
        return grad_out.reshape(B, g, C // g, -1).transpose(2, 3)

    def __repr__(self) -> str:
        return f"LayerView({self.name!r}, {type(self.module).__name__}, m={self.m}, n={self.n})"


def _conv_padding(module: nn.Conv2d) -> tuple[int, int, int, int]:
    """(left, right, top, bottom) zero/mode padding equivalent to the module's ``padding``."""
    if isinstance(module.padding, str):
        if module.padding == "valid":
            return (0, 0, 0, 0)
        pads = []
        for d, k in zip(module.dilation, module.kernel_size):  # 'same'
            total = d * (k - 1)
            pads.append((total // 2, total - total // 2))
        (top, bottom), (left, right) = pads
        return (left, right, top, bottom)
    ph, pw = module.padding
    return (pw, pw, ph, ph)


def _conv_patches(module: nn.Conv2d, x: Tensor) -> Tensor:
    """Unfolded conv input: [B, groups, T, (c_in/groups)·kh·kw], column order matching weight.reshape(m, -1)."""
    pad = _conv_padding(module)
    if any(pad):
        mode = "constant" if module.padding_mode == "zeros" else module.padding_mode
        x = F.pad(x, pad, mode=mode)
    cols = F.unfold(x, module.kernel_size, dilation=module.dilation, stride=module.stride)  # [B, c_in·k, T]
    B, _, T = cols.shape
    g = module.groups
    return cols.reshape(B, g, -1, T).transpose(2, 3)


def find_layers(
    model: nn.Module,
    *,
    layer_types: tuple[type[nn.Module], ...] = SUPPORTED_LAYERS,
    include: str | None = None,
    ignore: tuple[str, ...] = (),
    include_bias: bool = True,
) -> list[LayerView]:
    """Views of the model's prunable layers: type in ``layer_types``, name matching the ``include`` regex (all
    when None) and matching none of the ``ignore`` regexes (full match of the qualified name)."""
    import re

    views = []
    for name, module in model.named_modules():
        if not isinstance(module, layer_types) or not isinstance(module, SUPPORTED_LAYERS):
            continue
        if include is not None and not re.fullmatch(include, name):
            continue
        if any(re.fullmatch(pattern, name) for pattern in ignore):
            continue
        views.append(LayerView(module, name, include_bias))
    return views
