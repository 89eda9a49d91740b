"""Second moments of one layer's inputs on calibration data, measured on the model as it is now.

    S = Σ_b Σ_t a_bt a_btᵀ        (``diagonal=False``: [groups, n, n]; SparseGPT's H = 2 S / N)
    s = Σ_b Σ_t a_bt ⊙ a_bt       (``diagonal=True``:  [groups, n];    Wanda's ‖X_j‖₂ = √s_j)

a: the layer's input patches (trailing 1 for a folded bias, see :meth:`LayerView.patches`), b: samples, t:
tokens/locations. The forward stops at the layer (nothing after it runs), in eval mode and without gradients, so
measuring layer after layer on a model whose earlier layers are already pruned gives each layer the inputs that
the pruned model feeds it; layers fed the same tensor as the first (query, key, value) are measured in its pass.
:func:`all_input_moments` measures several layers in one full forward instead (a block's layers, none pruned in
between). Padding tokens (a mapping batch's ``attention_mask``) are left out.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from functools import partial

import torch
from torch import Tensor, nn

from fls_kernels.data import eval_mode, split_batch
from fls_kernels.layers.attention import unfused
from fls_kernels.layers.blocks import TOKEN_WEIGHTS
from fls_kernels.layers.views import LayerView


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
    """[B, T] 0/1 weights of the tokens of a Linear's input ``x`` ([B, T, n]): those of a mapping batch of that
    shape — a captured block batch's :data:`~fls_kernels.layers.blocks.TOKEN_WEIGHTS`, else its ``attention_mask``
    — or None (every token counts)."""
    if not isinstance(batch, Mapping) or x.dim() != 3:
        return None
    mask = batch.get(TOKEN_WEIGHTS, batch.get("attention_mask"))
    if not isinstance(mask, Tensor) or tuple(mask.shape) != tuple(x.shape[:2]):
        return None
    return mask.to(torch.float64)


@torch.no_grad()
def input_moments(
    model: nn.Module,
    views: list[LayerView],
    batches: Iterable[object],
    *,
    diagonal: bool,
    inputs: Callable[[object], tuple[tuple, dict]] = split_batch,
    reused: bool = False,
) -> list[InputMoments]:
    """Moments of the inputs of ``views[0]`` and of the layers after it that the forward calls next with the very
    same input tensor (attention's query, key and value): those inputs were computed before ``views[0]`` ran, so
    pruning it cannot change them, and one pass measures them all. Returns one entry per layer of that run.

    ``reused``: ``views[0]`` is called more than once per forward (see :func:`call_counts`); the whole forward
    runs and every call's input adds to its moments (the entry of ``views[0]`` only)."""
    captured: list[Tensor] = []  # views[0]'s input(s) on this batch
    reached = [0]  # how many of the views this batch's forward has fed so far

    def hook(i: int, module: nn.Module, args: tuple) -> None:
        x = args[0]
        if reused:
            if i == 0:
                captured.append(x)
                reached[0] = 1
            return
        if i == 0 or (reached[0] == i and captured and x is captured[-1]):
            if i == 0:
                captured.append(x)
            reached[0] = i + 1
            return
        if captured:  # a later layer ran on another input: views[0]'s input is known, stop here
            raise _Reached

    handles = [m.register_forward_pre_hook(partial(hook, i)) for i, v in enumerate(views) for m in v.modules]
    sums = _Sums(len(views), diagonal)
    measured = len(views)
    try:
        with eval_mode(model), unfused(model, math_sdpa=False):
            for batch in batches:
                args, kwargs = inputs(batch)
                reached[0] = 0
                try:
                    model(*args, **kwargs)
                except _Reached:
                    pass
                if not captured:
                    raise RuntimeError(f"layer {views[0].name!r} was not called by the model's forward on a batch")
                measured = min(measured, reached[0])
                xs = [x.detach() for x in captured] if reused else [captured[-1].detach()]
                captured.clear()
                for call, x in enumerate(xs):
                    parts: dict[object, tuple] = {}
                    for i in range(measured):
                        sums.add(i, views[i], batch, x, call, parts)
    finally:
        for h in handles:
            h.remove()
    return sums.result(measured)


@torch.no_grad()
def all_input_moments(
    model: nn.Module,
    views: list[LayerView],
    batches: Iterable[object],
    *,
    diagonal: bool,
    inputs: Callable[[object], tuple[tuple, dict]] = split_batch,
) -> list[InputMoments]:
    """Moments of the inputs of every one of ``views``, all measured in one whole forward per batch (every call of a
    re-used layer adds): none of them pruned between the measurements, as SparseGPT's and Wanda's authors measure
    the layers of one block. Returns one entry per view."""
    seen: list[list[Tensor]] = [[] for _ in views]

    def hook(i: int, module: nn.Module, args: tuple) -> None:
        # the tensor itself (no gradient is recorded), so that layers fed the same one share its product
        seen[i].append(args[0])

    handles = [m.register_forward_pre_hook(partial(hook, i)) for i, v in enumerate(views) for m in v.modules]
    sums = _Sums(len(views), diagonal)
    try:
        with eval_mode(model), unfused(model, math_sdpa=False):
            for batch in batches:
                args, kwargs = inputs(batch)
                model(*args, **kwargs)
                missing = [views[i].name for i, xs in enumerate(seen) if not xs]
                if missing:
                    raise RuntimeError(f"layer {missing[0]!r} was not called by the model's forward on a batch")
                parts: dict[object, tuple] = {}
                for i, xs in enumerate(seen):
                    for call, x in enumerate(xs):
                        sums.add(i, views[i], batch, x, call, parts)
                    xs.clear()
    finally:
        for h in handles:
            h.remove()
    return sums.result(len(views))


class _Sums:
    """Running Σ a aᵀ (or Σ a ⊙ a), samples and tokens of several layers' inputs."""

    def __init__(self, layers: int, diagonal: bool) -> None:
        self.diagonal = diagonal
        self.totals: list[Tensor | None] = [None] * layers
        self.counts = [[0, 0] for _ in range(layers)]

    def add(self, i: int, view: LayerView, batch: object, x: Tensor, call: int, parts: dict[object, tuple]) -> None:
        """Add ``x``, the input of layer ``i`` (``view``) at its ``call``-th call on ``batch``; ``parts`` holds this
        batch's (product, samples, tokens) by input tensor, so layers reading the same patches (q, k, v) share one."""
        key = (id(x), view.has_bias) if view.kind == "linear" else (id(x), i)
        if key not in parts:
            weights = token_weights(batch, x)
            a = view.patches(x)  # [B, g, T, n]
            if weights is not None:
                a = a * weights[:, None, :, None].to(a.dtype)
            tokens = int(weights.sum()) if weights is not None else a.shape[0] * a.shape[2]
            parts[key] = (_products(a, self.diagonal), a.shape[0], tokens)
        product, samples, tokens = parts[key]
        self.counts[i][0] += samples if call == 0 else 0  # samples once, tokens of every call
        self.counts[i][1] += tokens
        total = self.totals[i]
        if total is None:
            self.totals[i] = product.clone()  # layers sharing the product each keep their own sum
        else:
            total.add_(product)

    def result(self, layers: int) -> list[InputMoments]:
        """The first ``layers`` layers' moments; ValueError when nothing was measured."""
        if self.totals[0] is None:
            raise ValueError("loader: no calibration batches")
        return [InputMoments(self.totals[i], *self.counts[i]) for i in range(layers)]


def _products(a: Tensor, diagonal: bool) -> Tensor:
    """Σ_b Σ_t a aᵀ ([g, n, n]) or Σ a ⊙ a ([g, n]) of one batch's patches a [B, g, T, n], accumulated in float64: in
    the patches' precision (float32 at least) over the batch, the batches' sums then added in float64."""
    if a.dtype not in (torch.float32, torch.float64):
        a = a.float()
    part = torch.einsum("bgtn,bgtn->gn", a, a) if diagonal else torch.einsum("bgtn,bgtk->gnk", a, a)
    return part.to(torch.float64)


@torch.no_grad()
def call_counts(
    model: nn.Module, views: list[LayerView], batch: object, inputs: Callable[[object], tuple[tuple, dict]]
) -> list[int]:
    """How many times one forward of ``batch`` calls each view's module (> 1: a re-used layer)."""
    counts = [0] * len(views)

    def hook(i: int, module: nn.Module, args: tuple) -> None:
        counts[i] += 1

    handles = [m.register_forward_pre_hook(partial(hook, i)) for i, v in enumerate(views) for m in v.modules]
    try:
        with eval_mode(model), unfused(model, math_sdpa=False):
            args, kwargs = inputs(batch)
            model(*args, **kwargs)
    finally:
        for h in handles:
            h.remove()
    return counts
