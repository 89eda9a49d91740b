"""Keeping pruned weights at exactly zero through training, optimizer steps and reloads.

Hooks per pruner: a gradient hook that zeroes pruned entries of each weight's gradient; global optimizer step
pre- and post-hooks (any ``torch.optim`` optimizer) that zero the pruned entries of the gradients, of every
state tensor shaped like the weight (momentum, Adam moments) and of the weights themselves; and a
``load_state_dict`` post-hook on the model. Optimizers seen stepping are remembered (weakly) so a new prune
zeroes their state at once.
"""

from __future__ import annotations

import weakref

import torch
from torch import Tensor, nn
from torch.optim.optimizer import register_optimizer_step_post_hook, register_optimizer_step_pre_hook
from torch.utils.hooks import RemovableHandle


class MaskKeeper:
    """Holds ``masks`` (parameter → bool tensor of its shape, True = alive) on ``model``."""

    def __init__(self, model: nn.Module, masks: dict[nn.Parameter, Tensor]) -> None:
        self.model = model
        self.masks = masks
        self._handles: list[RemovableHandle] = []
        self._optimizers: weakref.WeakSet[torch.optim.Optimizer] = weakref.WeakSet()

    @property
    def attached(self) -> bool:
        """Whether the hooks are installed."""
        return bool(self._handles)

    def attach(self) -> None:
        """Install the hooks (idempotent)."""
        if self._handles:
            return
        for param, mask in self.masks.items():
            if param.requires_grad:
                self._handles.append(param.register_hook(lambda g, mask=mask: g.masked_fill(~mask, 0)))
        self._handles.append(register_optimizer_step_pre_hook(self._around_step))
        self._handles.append(register_optimizer_step_post_hook(self._around_step))
        self._handles.append(self.model.register_load_state_dict_post_hook(lambda module, keys: self.apply()))

    def detach(self) -> None:
        """Remove every hook."""
        for h in self._handles:
            h.remove()
        self._handles.clear()

    @torch.no_grad()
    def apply(self) -> None:
        """Set every pruned weight, its gradient and its optimizer state to exactly +0."""
        for param, mask in self.masks.items():
            self._zero(param, mask)
        for optimizer in list(self._optimizers):
            self._zero_state(optimizer)

    @staticmethod
    def _zero(param: Tensor, mask: Tensor) -> None:
        param.masked_fill_(~mask, 0)
        if param.grad is not None:
            param.grad.masked_fill_(~mask, 0)

    def _zero_state(self, optimizer: torch.optim.Optimizer) -> bool:
        seen = False
        for group in optimizer.param_groups:
            for param in group["params"]:
                mask = self.masks.get(param)
                if mask is None:
                    continue
                seen = True
                self._zero(param, mask)
                for value in optimizer.state.get(param, {}).values():
                    if isinstance(value, Tensor) and value.shape == param.shape:
                        value.masked_fill_(~mask, 0)
        return seen

    @torch.no_grad()
    def _around_step(self, optimizer: torch.optim.Optimizer, args, kwargs) -> None:
        if self._zero_state(optimizer):
            self._optimizers.add(optimizer)
