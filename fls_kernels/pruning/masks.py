"""Keeping pruned weights at exactly zero through training, optimizer steps and reloads.

Three hooks per pruner: a gradient hook that zeroes pruned entries of each weight's gradient; a global
optimizer step post-hook (any ``torch.optim`` optimizer) that re-zeroes pruned weights and every state
tensor shaped like them (momentum, Adam moments); and a ``load_state_dict`` post-hook on the model.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn
from torch.optim.optimizer import register_optimizer_step_post_hook
from torch.utils.hooks import RemovableHandle


class MaskKeeper:
    """Holds ``masks`` (parameter → bool tensor of its shape, True = alive) on ``model``."""

    def __init__(self, model: nn.Module, masks: dict[nn.Parameter, Tensor]) -> None:
        self.model = model
        self.masks = masks
        self._handles: list[RemovableHandle] = []

    def attach(self) -> None:
        """Install the hooks (idempotent)."""
        if self._handles:
            return
        for param, mask in self.masks.items():
            if param.requires_grad:
                self._handles.append(param.register_hook(lambda g, mask=mask: g.masked_fill(~mask, 0)))
        self._handles.append(register_optimizer_step_post_hook(self._after_step))
        self._handles.append(self.model.register_load_state_dict_post_hook(lambda module, keys: self.apply()))

    def detach(self) -> None:
        """Remove every hook."""
        for h in self._handles:
            h.remove()
        self._handles.clear()

    @torch.no_grad()
    def apply(self) -> None:
        """Set every pruned weight to exactly +0."""
        for param, mask in self.masks.items():
            param.masked_fill_(~mask, 0)

    @torch.no_grad()
    def _after_step(self, optimizer: torch.optim.Optimizer, args, kwargs) -> None:
        for group in optimizer.param_groups:
            for param in group["params"]:
                mask = self.masks.get(param)
                if mask is None:
                    continue
                param.masked_fill_(~mask, 0)
                for value in optimizer.state.get(param, {}).values():
                    if isinstance(value, Tensor) and value.shape == param.shape:
                        value.masked_fill_(~mask, 0)
