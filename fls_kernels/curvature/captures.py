"""Per-layer Fisher-vector products from captured activations and sampled-label output gradients.

    F_ll v = (1/B) Σ_b ⟨g_b, v⟩ g_b,   g_b = Σ_t δ_bt a_btᵀ  (the sample's sampled-label gradient of layer l)

— the diagonal block F_ll of the sampled Fisher, the same estimate diag F̂ and the K-FAC factors are built from.
For a block-diagonal Q and probes with block-diagonal covariance, the expected aux loss ½ tr(Q F_γ Q) − tr Q
depends only on these blocks: the cross-layer part of a whole-network FVP only adds variance. A layer is kept
as its input patches and output gradients ([B, g, T, n] and [B, g, T, m/g]) or, when that is larger, as its
per-sample gradients [B, m, n]; a product costs about 4·B·T·m·n multiply-adds either way, with no forward or
backward pass through the model.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from fls_kernels.layers.views import LayerView


class LayerCapture:
    """One layer's share of a captured batch.

    Args:
        view: the layer.
        a: its input patches, [B, g, T, n].
        d: the sampled-label gradients w.r.t. its output, [B, g, T, m/g].
        dtype: the dtype to keep them in (default: ``a``'s).
    """

    def __init__(self, view: LayerView, a: Tensor, d: Tensor, dtype: torch.dtype | None = None) -> None:
        B, g, T, n = a.shape
        k = d.shape[-1]
        if d.shape[:3] != (B, g, T) or g * k != view.m or n != view.n:
            raise ValueError(f"a, d: shapes {tuple(a.shape)}, {tuple(d.shape)} do not match {view}")
        dtype = dtype or a.dtype
        self.m, self.n, self.groups, self.rows = view.m, view.n, g, B
        if T * (n + k) <= k * n:
            self.a, self.d, self.grads = a.to(dtype), d.to(dtype), None
        else:
            self.a = self.d = None
            self.grads = torch.einsum("bgtk,bgtn->bgkn", d.to(dtype), a.to(dtype)).reshape(B, view.m, n)

    def product_sum(self, v: Tensor) -> Tensor:
        """Σ_b ⟨g_b, v⟩ g_b for an [m, n] ``v`` (not yet divided by the rows), in ``v``'s dtype."""
        if self.grads is not None:
            grads = self.grads.to(v.dtype)
            return torch.einsum("b,bmn->mn", torch.einsum("bmn,mn->b", grads, v), grads)
        a, d = self.a.to(v.dtype), self.d.to(v.dtype)
        vg = v.reshape(self.groups, self.m // self.groups, self.n)
        c = (torch.einsum("bgtn,gkn->bgtk", a, vg) * d).sum((1, 2, 3))
        return torch.einsum("bgtk,bgtn->gkn", d * c[:, None, None, None], a).reshape(self.m, self.n)

    def nbytes(self) -> int:
        tensors = [self.grads] if self.grads is not None else [self.a, self.d]
        return sum(t.numel() * t.element_size() for t in tensors)


class Capture:
    """One or more captured batches: a :class:`LayerCapture` per layer and batch, and their rows."""

    def __init__(self, layers: Sequence[Sequence[LayerCapture]]) -> None:
        if not layers:
            raise ValueError("layers: a capture needs at least one batch")
        self.batches = [list(per_layer) for per_layer in layers]
        self.rows = sum(batch[0].rows for batch in self.batches)

    @classmethod
    def join(cls, captures: Sequence[Capture]) -> Capture:
        """The captures' batches as one."""
        return cls([batch for c in captures for batch in c.batches])

    def fvp(self, vectors: list[Tensor]) -> list[Tensor]:
        """F_ll v_l for every layer l: (1/B) Σ_b ⟨g_b, v_l⟩ g_b over every captured sample."""
        out = []
        for i, v in enumerate(vectors):
            total = sum(batch[i].product_sum(v) for batch in self.batches)
            out.append(total / self.rows)
        return out

    def nbytes(self) -> int:
        """Memory held by the capture."""
        return sum(layer.nbytes() for batch in self.batches for layer in batch)
