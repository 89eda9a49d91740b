"""``nn.MultiheadAttention`` as layers the curvature can see.

PyTorch's attention computes its projections inside one fused function (and, in eval mode without gradients,
one native kernel with no forward-mode AD), so neither ``in_proj_weight`` (a bare Parameter) nor ``out_proj``
(a Linear that is never called as a module) would reach a layer hook. While :func:`unfused` is active, every
``nn.MultiheadAttention`` of a model runs an equivalent step-by-step forward instead:

    [q k v] = x W_inᵀ + b_in     (an :class:`InProjection` call: W_in is the [3d, d] matrix, pruned as one)
    o = softmax(q kᵀ/√h + mask) v per head,   y = out_proj(o)   (a Linear call)

so both are ordinary Linear layers to hooks, JVPs and VJPs; ``scaled_dot_product_attention`` runs its math
backend meanwhile (the fused CPU/GPU kernels have no forward-mode or double-backward AD). The in-projection is
one matrix only in self-attention (query, key and value the same tensor); other calls raise a ValueError naming
the layer.
"""

from __future__ import annotations

import contextlib
import math
import weakref
from collections.abc import Iterator

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class InProjection(nn.Module):
    """The packed [3d, d] input projection of one ``nn.MultiheadAttention`` as a Linear-like module. It holds
    no parameters of its own (``weight``/``bias`` read the attention's), so the model's state is unchanged."""

    def __init__(self, attention: nn.MultiheadAttention) -> None:
        super().__init__()
        object.__setattr__(self, "_attention", weakref.ref(attention))  # not a submodule

    @property
    def attention(self) -> nn.MultiheadAttention:
        return self._attention()

    @property
    def weight(self) -> Tensor:
        return self.attention.in_proj_weight

    @property
    def bias(self) -> Tensor | None:
        return self.attention.in_proj_bias

    @property
    def in_features(self) -> int:
        return self.attention.embed_dim

    def forward(self, x: Tensor) -> Tensor:
        return F.linear(x, self.weight, self.bias)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={3 * self.in_features}"


_PROJECTIONS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def in_projection(attention: nn.MultiheadAttention) -> InProjection | None:
    """The :class:`InProjection` of ``attention`` (one per module), or None when it has separate q/k/v weights."""
    if not attention._qkv_same_embed_dim or attention.in_proj_weight is None:
        return None
    if attention not in _PROJECTIONS:
        _PROJECTIONS[attention] = InProjection(attention)
    return _PROJECTIONS[attention]


def _merged_mask(attention_mask: Tensor | None, padding: Tensor | None, B: int, H: int, T: int, S: int, dtype):
    """Additive mask [B, H, T, S] (−inf where attention is not allowed) from attn_mask and key_padding_mask."""
    mask = torch.zeros(B, H, T, S, dtype=dtype, device=(padding if attention_mask is None else attention_mask).device)
    if attention_mask is not None:
        m = attention_mask
        m = torch.zeros_like(m, dtype=dtype).masked_fill(m, float("-inf")) if m.dtype == torch.bool else m.to(dtype)
        mask = mask + (m.reshape(B, H, T, S) if m.dim() == 3 else m)
    if padding is not None:
        p = padding
        p = torch.zeros_like(p, dtype=dtype).masked_fill(p, float("-inf")) if p.dtype == torch.bool else p.to(dtype)
        mask = mask + p[:, None, None, :]
    return mask


def attention_forward(
    attention: nn.MultiheadAttention,
    query: Tensor,
    key: Tensor,
    value: Tensor,
    key_padding_mask: Tensor | None = None,
    need_weights: bool = True,
    attn_mask: Tensor | None = None,
    average_attn_weights: bool = True,
    is_causal: bool = False,
) -> tuple[Tensor, Tensor | None]:
    """``nn.MultiheadAttention.forward`` (eval mode: no dropout) with the projections as module calls."""
    m = attention
    name = type(m).__name__
    if m.bias_k is not None or m.add_zero_attn:
        raise ValueError(f"model: {name} with add_bias_kv/add_zero_attn is not supported by the curvature passes")
    if not (query is key and key is value):
        raise ValueError(
            f"model: the in-projection of a {name} is pruned as one [3d, d] matrix in self-attention only "
            "(query, key and value the same tensor); leave the attention's in_proj out with ignore="
        )
    batched = query.dim() == 3
    x = query if not batched else (query if m.batch_first else query.transpose(0, 1))
    if not batched:
        x = x.unsqueeze(0)
    B, T, d = x.shape
    H = m.num_heads
    qkv = in_projection(m)(x)  # [B, T, 3d]
    q, k, v = (t.reshape(B, T, H, d // H).transpose(1, 2) for t in qkv.split(d, dim=-1))  # [B, H, T, h]
    if is_causal and attn_mask is None:
        attn_mask = torch.triu(torch.ones(T, T, dtype=torch.bool, device=x.device), 1)
    if key_padding_mask is not None and not batched:
        key_padding_mask = key_padding_mask.unsqueeze(0)
    scores = q @ k.transpose(-2, -1) / math.sqrt(d // H)
    if attn_mask is not None or key_padding_mask is not None:
        scores = scores + _merged_mask(attn_mask, key_padding_mask, B, H, T, T, scores.dtype)
    weights = torch.softmax(scores, dim=-1)
    out = m.out_proj((weights @ v).transpose(1, 2).reshape(B, T, d))
    if not batched:
        out, weights = out.squeeze(0), weights.squeeze(0)
    elif not m.batch_first:
        out = out.transpose(0, 1)
    if not need_weights:
        return out, None
    return out, weights.mean(dim=-3) if average_attn_weights else weights


@contextlib.contextmanager
def unfused(model: nn.Module, *, math_sdpa: bool = True) -> Iterator[None]:
    """For the duration: every ``nn.MultiheadAttention`` of ``model`` runs :func:`attention_forward` (its
    projections as module calls, so that hooks see them) and PyTorch's fused transformer fast path is off; with
    ``math_sdpa``, ``scaled_dot_product_attention`` (transformers' default attention) also uses its math backend,
    whose ops all have forward-mode and double-backward AD — passes that need only first-order gradients (the
    statistics, captures and input moments) leave it off and keep the fused kernels. Restored on exit."""
    from torch.nn.attention import SDPBackend, sdpa_kernel

    attentions = [m for m in model.modules() if isinstance(m, nn.MultiheadAttention)]
    fastpath = torch.backends.mha.get_fastpath_enabled()
    saved = [(m, m.__dict__.get("forward")) for m in attentions]
    torch.backends.mha.set_fastpath_enabled(False)
    try:
        for m in attentions:

            def forward(*args, _m=m, **kwargs):
                return attention_forward(_m, *args, **kwargs)

            m.forward = forward
        with sdpa_kernel([SDPBackend.MATH]) if math_sdpa else contextlib.nullcontext():
            yield
    finally:
        for m, before in saved:
            if before is None:
                m.__dict__.pop("forward", None)
            else:
                m.forward = before
        torch.backends.mha.set_fastpath_enabled(fastpath)
