"""The matrix view of a prunable layer: W ∈ ℝ^{m×n} with the bias folded in as the last column.

Every supported layer computes y_t = W a_t at each of its T output locations (tokens, positions) t, from an
input patch a_t ∈ ℝⁿ (with a trailing 1 for the bias), which the K-FAC factors and per-sample gradients are
built from. With groups > 1, W is the g diagonal blocks [m/g, n] stacked: output channel o of group o // (m/g)
reads only its group's patch.

====================  ============  =====================================  =====================================
layer                 m             n (+1 with a folded bias)              W from the weight
====================  ============  =====================================  =====================================
Linear                out_features  in_features                            weight [m, n]
GPT-2 Conv1D          nf            nx                                     weight.T (weight [nx, nf], y = x W + b)
Conv1d                out_channels  (in_channels/groups)·k                 weight.reshape(m, -1)
Conv2d                out_channels  (in_channels/groups)·kh·kw             weight.reshape(m, -1)
ConvTranspose1d       out_channels  (in_channels/groups)·k                 flipped, in/out-swapped weight
ConvTranspose2d       out_channels  (in_channels/groups)·kh·kw             flipped, in/out-swapped weight
MultiheadAttention    3·embed_dim   embed_dim                              in_proj_weight (layer <name>.in_proj)
====================  ============  =====================================  =====================================

GPT-2 Conv1D is ``transformers.pytorch_utils.Conv1D`` (a Linear stored transposed), recognised without importing
transformers (:class:`GPT2Conv1D`). Convolutions take batched inputs [B, C, *spatial]; Conv1d/Conv2d support
every padding (ints, 'same', 'valid') and padding mode, stride, dilation and groups.

A transposed convolution (weight w [c_in, c_out/g, *k], stride s, padding p, output padding q, dilation d) is the
stride-1 convolution, dilation d, of its input zero-stuffed (s − 1 zeros between neighbours) and padded by
d(k−1) − p before and d(k−1) − p + q after (a negative pad crops), with the kernel flipped and its in/out
channels swapped: W[γ·c_out/g + o, (c, j)] = w[γ·c_in/g + c, o, k−1−j] for group γ, output channel o, input
channel c of the group and kernel index j (per spatial dim; column c·prod(k) + j, j row-major). The patches are
the unfolded padded input, so y_t = W a_t per output location, and W is a permutation of the weight's entries
(:meth:`LayerView.weight_matrix` and :meth:`LayerView.matrix_weight` are inverse). Only padding_mode='zeros'
(the only one torch allows) and calls without ``output_size`` are supported.

MultiheadAttention stands for its packed q/k/v in-projection, an
:class:`~fls_kernels.layers.attention.InProjection` view (self-attention only; see
:mod:`fls_kernels.layers.attention`); its ``out_proj`` is an ordinary Linear.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from fls_kernels.layers.attention import InProjection, in_projection

_TRANSPOSED_CONVS = (nn.ConvTranspose1d, nn.ConvTranspose2d)
_CONVS = (nn.Conv1d, nn.Conv2d)
#: qualified names of transformers' GPT-2 Conv1D (its current and its older home)
_GPT2_CONV1D = ("transformers.pytorch_utils.Conv1D", "transformers.modeling_utils.Conv1D")


def _is_gpt2_conv1d_class(cls: type) -> bool:
    return any(f"{c.__module__}.{c.__qualname__}" in _GPT2_CONV1D for c in getattr(cls, "__mro__", ()))


def is_gpt2_conv1d(module: object) -> bool:
    """Whether ``module`` is transformers' GPT-2 ``Conv1D`` (weight [nx, nf], y = x @ weight + bias): by its class
    path, or a class named ``Conv1D`` with an int ``nf`` and a 2-D weight [nx, nf]. Never imports transformers."""
    if not isinstance(module, nn.Module):
        return False
    if _is_gpt2_conv1d_class(type(module)):
        return True
    weight, nf = getattr(module, "weight", None), getattr(module, "nf", None)
    return (
        type(module).__name__ == "Conv1D"
        and isinstance(nf, int)
        and isinstance(weight, Tensor)
        and weight.dim() == 2
        and weight.shape[1] == nf
    )


class _GPT2Conv1DMeta(type):
    def __instancecheck__(cls, obj: object) -> bool:
        return is_gpt2_conv1d(obj)

    def __subclasscheck__(cls, sub: type) -> bool:
        return sub is cls or _is_gpt2_conv1d_class(sub)


class GPT2Conv1D(metaclass=_GPT2Conv1DMeta):
    """Stands for transformers' GPT-2 ``Conv1D`` in ``layer_types`` and ``isinstance`` checks (see
    :func:`is_gpt2_conv1d`), so that transformers need not be imported; never instantiated."""

    def __new__(cls, *args: object, **kwargs: object) -> GPT2Conv1D:
        raise TypeError("GPT2Conv1D only stands for transformers.pytorch_utils.Conv1D; build that instead")


#: Layer types the curvature floor knows how to view as matrices.
SUPPORTED_LAYERS: tuple[type[nn.Module], ...] = (
    nn.Linear,
    GPT2Conv1D,  # type: ignore[assignment]
    nn.Conv1d,
    nn.Conv2d,
    nn.ConvTranspose1d,
    nn.ConvTranspose2d,
    nn.MultiheadAttention,  # its packed [3d, d] in-projection (an InProjection view); out_proj is a Linear
)


def _kind(module: nn.Module, label: str) -> str:
    """'linear', 'linear_t' (GPT-2 Conv1D), 'conv' or 'conv_t' (transposed conv); TypeError otherwise."""
    if isinstance(module, InProjection):
        kind = "linear"
    elif is_gpt2_conv1d(module):
        kind = "linear_t"
    elif isinstance(module, nn.Linear):
        kind = "linear"
    elif isinstance(module, _CONVS):
        kind = "conv"
    elif isinstance(module, _TRANSPOSED_CONVS):
        if module.padding_mode != "zeros":
            raise ValueError(
                f"module: {label} is a {type(module).__name__} with padding_mode={module.padding_mode!r}; "
                "only 'zeros' is supported for transposed convolutions"
            )
        kind = "conv_t"
    else:
        raise TypeError(
            f"module: {label} is a {type(module).__name__}, expected one of {[t.__name__ for t in SUPPORTED_LAYERS]}"
        )
    weight = getattr(module, "weight", None)
    dims = 2 if kind in ("linear", "linear_t") else 2 + len(module.kernel_size)
    if not isinstance(weight, Tensor) or weight.dim() != dims:
        raise TypeError(f"module: {label} is a {type(module).__name__} without a {dims}-D weight")
    return kind


class LayerView:
    """A prunable layer seen as one matrix.

    Args:
        module: one of :data:`SUPPORTED_LAYERS` (see the module docstring for each one's matrix).
        name: its qualified name in the model.
        include_bias: fold the bias (when present) into the matrix as the last column.
    """

    def __init__(self, module: nn.Module, name: str, include_bias: bool = True) -> None:
        self.kind = _kind(module, name or type(module).__name__)
        self.module = module
        self.name = name
        #: every module that computes with this weight (the first is ``module``); see :meth:`share`
        self.modules: tuple[nn.Module, ...] = (module,)
        self.aliases: tuple[str, ...] = ()  # the other modules' names
        self.has_bias = include_bias and getattr(module, "bias", None) is not None
        packed = isinstance(module, InProjection)  # named <attention>.in_proj; its tensors the attention's
        self._prefix = name.rpartition(".")[0] if packed else name  # the attention's own name
        self._keys = ("in_proj_weight", "in_proj_bias") if packed else ("weight", "bias")
        weight = module.weight
        self.groups = getattr(module, "groups", 1)
        if self.kind == "linear_t":
            self.n_weight, self.m = weight.shape
        elif self.kind == "conv_t":
            self.m = weight.shape[1] * self.groups
            self.n_weight = weight.shape[0] // self.groups * math.prod(weight.shape[2:])
        else:
            self.m = weight.shape[0]
            self.n_weight = weight[0].numel()

    def share(self, other: LayerView) -> None:
        """Take in ``other``, a module holding the same weight: one matrix whose curvature gathers both modules'
        calls. Their biases are folded in only when they are one tensor too (else the view covers the weight
        alone and the biases stay as they are). Raises ValueError naming both unless they are the same layer
        type and configuration."""
        a, b = self.module, other.module
        if type(a) is not type(b) or a.extra_repr() != b.extra_repr():
            raise ValueError(
                f"model: {self.name!r} and {other.name!r} share their weight but are different layers ({a!r} vs "
                f"{b!r}); untie them or leave one out with ignore="
            )
        if not (self.has_bias and other.has_bias and a.bias is b.bias):
            self.has_bias = False
        self.modules += (b,)
        self.aliases += (other.name,)

    @property
    def n(self) -> int:
        """Columns of the matrix: the weight's fan-in, plus one for a folded bias."""
        return self.n_weight + int(self.has_bias)

    @property
    def weight(self) -> nn.Parameter:
        return self.module.weight

    @property
    def weight_key(self) -> str:
        """The weight's qualified name in the model (e.g. ``fc.weight``, ``attn.in_proj_weight``)."""
        return next(iter(self.parameters()))

    def parameters(self) -> dict[str, nn.Parameter]:
        """The parameters the matrix covers, keyed by their qualified names in the model."""
        prefix = f"{self._prefix}." if self._prefix else ""
        params = {f"{prefix}{self._keys[0]}": self.module.weight}
        if self.has_bias:
            params[f"{prefix}{self._keys[1]}"] = self.module.bias
        return params

    def matrix(self, dtype: torch.dtype | None = None) -> Tensor:
        """The layer as a new contiguous [m, n] tensor (weight columns, then the bias)."""
        return self.to_matrix([p.detach() for p in self.parameters().values()], dtype)

    def weight_matrix(self, t: Tensor) -> Tensor:
        """Weight-shaped [..., *weight.shape] (any dtype: gradients, bool masks) → [..., m, n_weight]."""
        shape = self.module.weight.shape
        lead = t.shape[: t.dim() - len(shape)]
        if self.kind == "linear_t":
            return t.transpose(-1, -2).contiguous()
        if self.kind != "conv_t":
            return t.reshape(*lead, self.m, self.n_weight)
        L, g, k = len(lead), self.groups, shape[2:]
        kdims = list(range(L + 3, L + 3 + len(k)))
        t = t.reshape(*lead, g, shape[0] // g, shape[1], *k).flip(kdims)
        return t.permute(*range(L), L, L + 2, L + 1, *kdims).reshape(*lead, self.m, self.n_weight)

    def matrix_weight(self, M: Tensor) -> Tensor:
        """[..., m, n_weight] → weight-shaped [..., *weight.shape]: the inverse of :meth:`weight_matrix`."""
        shape = self.module.weight.shape
        lead = M.shape[:-2]
        if self.kind == "linear_t":
            return M.transpose(-1, -2).contiguous()
        if self.kind != "conv_t":
            return M.reshape(*lead, *shape)
        L, g, k = len(lead), self.groups, shape[2:]
        kdims = list(range(L + 3, L + 3 + len(k)))
        M = M.reshape(*lead, g, shape[1], shape[0] // g, *k).permute(*range(L), L, L + 2, L + 1, *kdims)
        return M.flip(kdims).reshape(*lead, *shape)

    def to_matrix(self, tensors: list[Tensor], dtype: torch.dtype | None = None) -> Tensor:
        """[weight-shaped, (bias-shaped)] → [m, n]."""
        cols = [self.weight_matrix(tensors[0])]
        if self.has_bias:
            cols.append(tensors[1].reshape(self.m, 1))
        out = torch.cat(cols, dim=1)
        return out if dtype is None else out.to(dtype)

    def split(self, W: Tensor) -> list[Tensor]:
        """[m, n] → [weight-shaped, (bias-shaped)] tensors in the parameters' dtype."""
        dtype = self.module.weight.dtype
        parts = [self.matrix_weight(W[:, : self.n_weight]).to(dtype)]
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
        if self.kind in ("linear", "linear_t"):
            a = x.reshape(x.shape[0], 1, -1, x.shape[-1])
        elif self.kind == "conv":
            a = _conv_patches(self.module, x)  # [B, g, T, n_weight]
        else:
            a = _conv_transpose_patches(self.module, x)
        if self.has_bias:
            a = torch.cat([a, a.new_ones(*a.shape[:-1], 1)], dim=-1)
        return a

    def output_grads(self, grad_out: Tensor) -> Tensor:
        """The gradient w.r.t. the layer output as [B, groups, T, m/groups]."""
        if self.kind in ("linear", "linear_t"):
            return grad_out.reshape(grad_out.shape[0], 1, -1, grad_out.shape[-1])
        B, C = grad_out.shape[:2]
        g = self.groups
        return grad_out.reshape(B, g, C // g, -1).transpose(2, 3)

    def __repr__(self) -> str:
        return f"LayerView({self.name!r}, {type(self.module).__name__}, m={self.m}, n={self.n})"


def _conv_padding(module: nn.Conv1d | nn.Conv2d) -> tuple[int, ...]:
    """F.pad amounts (last spatial dim first: left, right, top, bottom) equivalent to the module's ``padding``."""
    if isinstance(module.padding, str):
        if module.padding == "valid":
            return (0,) * (2 * len(module.kernel_size))
        pads: list[int] = []
        for d, k in zip(reversed(module.dilation), reversed(module.kernel_size)):  # 'same': an odd extra one after
            total = d * (k - 1)
            pads += [total // 2, total - total // 2]
        return tuple(pads)
    return tuple(p for p in reversed(module.padding) for _ in range(2))


def _unfold(x: Tensor, kernel: tuple[int, ...], dilation: tuple[int, ...], stride: tuple[int, ...]) -> Tensor:
    """[B, C, *spatial] (1-D or 2-D) → [B, C·prod(kernel), T] (channel-major columns, as weight.reshape(m, -1))."""
    if x.dim() == 3:
        x, kernel, dilation, stride = x.unsqueeze(2), (1, *kernel), (1, *dilation), (1, *stride)
    return F.unfold(x, kernel, dilation=dilation, stride=stride)


def _grouped(cols: Tensor, groups: int) -> Tensor:
    B, _, T = cols.shape
    return cols.reshape(B, groups, -1, T).transpose(2, 3)


def _conv_patches(module: nn.Conv1d | nn.Conv2d, x: Tensor) -> Tensor:
    """Unfolded conv input: [B, groups, T, (c_in/groups)·prod(k)], column order matching weight.reshape(m, -1)."""
    pad = _conv_padding(module)
    if any(pad):
        mode = "constant" if module.padding_mode == "zeros" else module.padding_mode
        x = F.pad(x, pad, mode=mode)
    cols = _unfold(x, module.kernel_size, module.dilation, module.stride)
    return _grouped(cols, module.groups)


def _conv_transpose_patches(module: nn.ConvTranspose1d | nn.ConvTranspose2d, x: Tensor) -> Tensor:
    """The transposed conv's input zero-stuffed, padded by d(k−1)−p (+ output padding after) and unfolded with
    stride 1: [B, groups, T, (c_in/groups)·prod(k)], column order matching :meth:`LayerView.weight_matrix`."""
    stride, dilation, kernel = module.stride, module.dilation, module.kernel_size
    if any(s > 1 for s in stride):
        B, C, *size = x.shape
        up = x.new_zeros(B, C, *[(n - 1) * s + 1 for n, s in zip(size, stride)])
        up[(slice(None), slice(None), *(slice(None, None, s) for s in stride))] = x
        x = up
    pad: list[int] = []
    for d, k, p, q in reversed(list(zip(dilation, kernel, module.padding, module.output_padding))):
        edge = d * (k - 1) - p
        pad += [edge, edge + q]
    if any(pad):
        x = F.pad(x, pad)  # negative amounts crop
    cols = _unfold(x, kernel, dilation, (1,) * len(kernel))
    return _grouped(cols, module.groups)


def find_layers(
    model: nn.Module,
    *,
    layer_types: tuple[type[nn.Module], ...] = SUPPORTED_LAYERS,
    include: str | None = None,
    ignore: tuple[str, ...] = (),
    include_bias: bool = True,
) -> list[LayerView]:
    """Views of the model's prunable layers: type in ``layer_types``, name matching the ``include`` regex (all
    when None) and matching none of the ``ignore`` regexes (full match of the qualified name). Modules that share
    one weight give one view (:meth:`LayerView.share`), named after the first."""
    import re

    views: list[LayerView] = []
    by_weight: dict[int, LayerView] = {}
    for name, module in model.named_modules():
        if not isinstance(module, layer_types) or not isinstance(module, SUPPORTED_LAYERS):
            continue
        if isinstance(module, nn.MultiheadAttention):
            module, name = in_projection(module), f"{name}.in_proj" if name else "in_proj"
            if module is None:  # separate q/k/v weights: not a packed matrix
                continue
        if include is not None and not re.fullmatch(include, name):
            continue
        if any(re.fullmatch(pattern, name) for pattern in ignore):
            continue
        view = LayerView(module, name, include_bias)
        first = by_weight.get(id(module.weight))
        if first is not None:
            first.share(view)  # a tied weight: one view over every module using it
            continue
        by_weight[id(module.weight)] = view
        views.append(view)
    return views
