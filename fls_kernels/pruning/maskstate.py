"""The masks of a pruner's layers: what is alive, the hooks that keep the rest at zero, and snapshots.

A :class:`MaskState` reads like a mapping layer name → bool mask shaped like the layer's weight (True = alive).
It writes a step's new weights and masks (:meth:`MaskState.commit`), holds the optimizer/gradient/reload hooks
(:class:`~fls_kernels.pruning.hooks.MaskKeeper`) and takes the snapshot that an all-or-nothing step restores.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping

import torch
from torch import Tensor, nn

from fls_kernels.layers.views import LayerView
from fls_kernels.pruning.hooks import MaskKeeper
from fls_kernels.pruning.patterns import NMPattern, Pattern


class MaskState(Mapping[str, Tensor]):
    """Masks of ``views`` on ``model``, all alive at first; hooks are installed by :meth:`attach`.

    Args:
        model: the pruned network.
        views: its prunable layers.
        pattern: the sparsity pattern (its unit size and groups count pruned weights).
        masks: layer name → the mask tensor to hold (shared, written in place: a block's part of a whole model's
            masks); None: new masks, all alive.
    """

    def __init__(
        self,
        model: nn.Module,
        views: list[LayerView],
        pattern: Pattern | NMPattern,
        masks: Mapping[str, Tensor] | None = None,
    ) -> None:
        self.views = views
        self.pattern = pattern
        if masks is None:
            masks = {v.name: torch.ones_like(v.weight, dtype=torch.bool) for v in views}
        self._masks = dict(masks)
        self.keeper = MaskKeeper(model, {v.weight: self._masks[v.name] for v in views})

    # ------------------------------------------------------------------------------------------ mapping
    def __getitem__(self, name: str) -> Tensor:
        return self._masks[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._masks)

    def __len__(self) -> int:
        return len(self._masks)

    # ------------------------------------------------------------------------------------------ hooks
    def attach(self) -> None:
        """Install the gradient, optimizer-step and reload hooks (idempotent)."""
        self.keeper.attach()

    def detach(self) -> None:
        """Remove every hook."""
        self.keeper.detach()

    @property
    def attached(self) -> bool:
        return self.keeper.attached

    def apply(self) -> None:
        """Set every pruned weight, its gradient and its optimizer state to exactly +0."""
        self.keeper.apply()

    # ------------------------------------------------------------------------------------------ counts
    def full(self, index: int) -> Tensor:
        """Layer ``index``'s alive mask as its [m, n] matrix (the bias column always alive)."""
        view = self.views[index]
        mask = view.weight_matrix(self._masks[view.name])
        if view.has_bias:
            mask = torch.cat([mask, mask.new_ones(view.m, 1)], dim=1)
        return mask

    def num_prunable(self) -> int:
        """d: the number of prunable weights (biases excluded)."""
        return sum(v.m * v.n_weight for v in self.views)

    def num_pruned(self) -> int:
        return sum(int((~m).sum()) for m in self._masks.values())

    def sparsity(self) -> float:
        """Fraction of prunable weights removed."""
        return self.num_pruned() / self.num_prunable()

    def pruned_units(self, index: int) -> int:
        """Pattern units (weights or blocks) of layer ``index`` removed so far."""
        return int((~self._masks[self.views[index].name]).sum()) // self.pattern.size

    def total_units(self, index: int) -> int:
        """Pattern units of layer ``index``."""
        return self.views[index].m * self.views[index].n_weight // self.pattern.size

    def groups(self) -> int:
        """N:M: the number of groups of M inputs over every layer."""
        return sum(v.m * v.n_weight // self.pattern.m for v in self.views)

    def layer_sparsity(self) -> dict[str, float]:
        """Layer name → fraction of its weights removed."""
        return {name: int((~m).sum()) / m.numel() for name, m in self._masks.items()}

    def report(self) -> str:
        """A per-layer table: shape, weights, pruned, sparsity, and the total."""
        lines = [f"{'layer':<32} {'matrix':>14} {'weights':>10} {'pruned':>10} {'sparsity':>9}"]
        for v in self.views:
            pruned = int((~self._masks[v.name]).sum())
            total = v.m * v.n_weight
            lines.append(f"{v.name:<32} {f'{v.m}x{v.n}':>14} {total:>10} {pruned:>10} {pruned / total:>9.4f}")
        total = f"{self.num_prunable():>10} {self.num_pruned():>10} {self.sparsity():>9.4f}"
        lines.append(f"{'total':<32} {'':>14} {total}")
        return "\n".join(lines)

    # ------------------------------------------------------------------------------------------ writing
    def check_finite(self, outcome: str = "nothing was pruned") -> None:
        """ValueError naming the first layer parameter that holds NaN or Inf (and ``outcome``)."""
        for view in self.views:
            for name, p in view.parameters().items():
                if not bool(torch.isfinite(p.detach()).all()):
                    raise ValueError(f"model: parameter {name!r} contains NaN or Inf; {outcome}")

    def commit(self, index: int, W: Tensor, keep: Tensor) -> None:
        """Write layer ``index``'s matrix W ([m, n]) into its parameters and ``keep`` ([m, n]) as its mask."""
        view = self.views[index]
        view.write(W)
        self._masks[view.name].copy_(view.matrix_weight(keep[:, : view.n_weight]))

    def snapshot(self) -> dict:
        """Copies of the layers' parameters and of the masks, for :meth:`restore`."""
        return {
            "params": {name: p.detach().clone() for v in self.views for name, p in v.parameters().items()},
            "masks": {k: m.clone() for k, m in self._masks.items()},
        }

    @torch.no_grad()
    def restore(self, snap: dict) -> None:
        """Put the parameters and masks back as :meth:`snapshot` found them."""
        for view in self.views:
            for name, p in view.parameters().items():
                p.copy_(snap["params"][name])
        self.load(snap["masks"])

    def state_dict(self) -> dict[str, Tensor]:
        return {k: m.clone() for k, m in self._masks.items()}

    def check(self, masks: Mapping[str, Tensor]) -> None:
        """ValueError unless ``masks`` has these layers, with bool masks of their shapes."""
        if set(masks) != set(self._masks):
            raise ValueError(f"state_dict: layers {sorted(masks)} do not match this pruner's {sorted(self._masks)}")
        for k, m in masks.items():
            if m.shape != self._masks[k].shape or m.dtype != torch.bool:
                raise ValueError(
                    f"state_dict: mask of {k!r} has shape {tuple(m.shape)} / {m.dtype}, expected "
                    f"{tuple(self._masks[k].shape)} / torch.bool"
                )

    def load(self, masks: Mapping[str, Tensor]) -> None:
        """Copy ``masks`` (checked with :meth:`check`) into this state's masks, in place."""
        for k, m in masks.items():
            self._masks[k].copy_(m.to(self._masks[k].device))
