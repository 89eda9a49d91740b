"""Checks of a pruner checkpoint (``Pruner.state_dict()`` output) against the pruner loading it."""

from __future__ import annotations

from collections.abc import Mapping

from torch import Tensor

from fls_kernels.pruning.context import Context


def checked_masks(state: object, ctx: Context) -> Mapping[str, Tensor]:
    """The masks of ``state`` once it is known to fit this pruner.

    A state saved before any pruning loads into a pruner of any pattern (a fitted Q serves them all).

    Raises:
        ValueError: not a pruner state, saved by another method, with another pattern (once pruned), for other
            layers or mask shapes, or for another rank or sharding.
    """
    if not isinstance(state, Mapping) or "masks" not in state:
        raise ValueError("state_dict: not a pruner state (no 'masks')")
    if state.get("method") != ctx.owner:
        raise ValueError(f"state_dict: saved by {state.get('method')}, loading into {ctx.owner}")
    masks = state["masks"]
    pruned = any(not bool(m.all()) for m in masks.values())
    if pruned and state.get("pattern", str(ctx.pattern)) != str(ctx.pattern):
        raise ValueError(f"state_dict: saved with pattern {state['pattern']}, this pruner uses {ctx.pattern}")
    ctx.masks.check(masks)
    if state.get("shard") != ctx.mode.shard():
        raise ValueError(
            f"state_dict: saved for layer owners {state.get('shard')}, this pruner has {ctx.mode.shard()} "
            "(a sharded state loads only into the same rank of the same sharding)"
        )
    return masks
