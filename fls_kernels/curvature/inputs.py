"""Second moments of one layer's inputs on calibration data, measured on the model as it is now.

    S = Σ_b Σ_t a_bt a_btᵀ        (``diagonal=False``: [groups, n, n]; SparseGPT's H = 2 S / N)
    s = Σ_b Σ_t a_bt ⊙ a_bt       (``diagonal=True``:  [groups, n];    Wanda's ‖X_j‖₂ = √s_j)

a: the layer's input patches (trailing 1 for a folded bias, see :meth:`LayerView.patches`), b: samples, t:
tokens/locations. The forward stops at the layer (nothing after it runs), in eval mode and without gradients, so
measuring layer after layer on a model whose earlier layers are already pruned gives each layer the inputs that
the pruned model feeds it. Padding tokens (a mapping batch's ``attention_mask``) are left out.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from fls_kernels.curvature.layers import LayerView
from fls_kernels.data import eval_mode, split_batch


class _Reached(Exception):
    """Raised by the pre-hook once the layer's input is captured: the rest of the forward is not needed."""


@dataclass
class InputMoments:
    """Σ a aᵀ (or Σ a ⊙ a) over the calibration tokens of one layer.

    Attributes:
        total: [groups, n, n] or [groups, n], float64.
        samples: N, the number of samples (sequences, images) measured.
        tokens: the number of tokens/locations measured (padding excluded).
    """

    total: Tensor
    samples: int
    tokens: int


def token_weights(batch: object, x: Tensor) -> Tensor | None:
    """[B, T] 0/1 weights of the tokens of a Linear's input ``x`` ([B, T, n]): the batch's ``attention_mask``
    when it is a mapping holding one of that shape, else None (every token counts)."""
    if not isinstance(batch, Mapping) or x.dim() != 3:
        return None
    mask = batch.get("attention_mask")
    if not isinstance(mask, Tensor) or tuple(mask.shape) != tuple(x.shape[:2]):
        return None
    return mask.to(torch.float64)


@torch.no_grad()
def input_moments(
    model: nn.Module,
    view: LayerView,
    batches: Iterable[object],
    *,
    diagonal: bool,
    inputs: Callable[[object], tuple[tuple, dict]] = split_batch,
) -> InputMoments:
    """Moments of ``view``'s inputs over ``batches`` (see the module docstring)."""
    captured: list[Tensor] = []

    def hook(module: nn.Module, args: tuple) -> None:
        captured.append(args[0].detach())
        raise _Reached

    total, samples, tokens = None, 0, 0
    handle = view.module.register_forward_pre_hook(hook)
    try:
        with eval_mode(model):
            for batch in batches:
                args, kwargs = inputs(batch)
                try:
                    model(*args, **kwargs)
                except _Reached:
                    pass
                if not captured:
                    raise RuntimeError(f"layer {view.name!r} was not called by the model's forward on a batch")
                x = captured.pop()
                a = view.patches(x).to(torch.float64)  # [B, g, T, n]
                weights = token_weights(batch, x)
                if weights is not None:
                    a = a * weights[:, None, :, None]
                    tokens += int(weights.sum())
                else:
                    tokens += a.shape[0] * a.shape[2]
                samples += a.shape[0]
                part = torch.einsum("bgtn,bgtn->gn", a, a) if diagonal else torch.einsum("bgtn,bgtk->gnk", a, a)
                total = part if total is None else total + part
    finally:
        handle.remove()
    if total is None:
        raise ValueError("loader: no calibration batches")
    return InputMoments(total, samples, tokens)
