"""Which layers a pruner prunes: the model unwrapped from DDP/FSDP, layers by type, regex and ignore list."""

from __future__ import annotations

import re
from collections.abc import Sequence

from torch import nn
from torch.nn.parallel import DistributedDataParallel

from fls_kernels.curvature.layers import LayerView, find_layers


def _wrappers() -> tuple[type[nn.Module], ...]:
    """Data-parallel wrappers whose ``.module`` is pruned in place."""
    try:
        from torch.distributed.fsdp import FullyShardedDataParallel
    except ImportError:  # torch built without distributed support
        return (DistributedDataParallel,)
    return (DistributedDataParallel, FullyShardedDataParallel)


def unwrap(model: object) -> nn.Module:
    """``model`` itself, or the module a DDP / FSDP wrapper holds (FSDP: prune inside summon_full_params)."""
    if not isinstance(model, nn.Module):
        raise TypeError(f"model: expected an nn.Module, got {type(model).__name__}")
    if isinstance(model, _wrappers()) and isinstance(getattr(model, "module", None), nn.Module):
        return model.module
    return model


def select_layers(
    model: nn.Module,
    *,
    layer_types: Sequence[type[nn.Module]],
    include: str | None,
    ignore: Sequence[str] | str,
    include_bias: bool,
) -> list[LayerView]:
    """Views of the layers to prune, all on one device.

    Raises:
        ValueError: an invalid regex, no layer selected, or layers on several devices.
    """
    ignore = (ignore,) if isinstance(ignore, str) else tuple(ignore)
    for pattern in ([include] if include is not None else []) + list(ignore):
        try:
            re.compile(pattern)
        except (re.error, TypeError) as exc:
            raise ValueError(f"include/ignore: invalid regex {pattern!r}: {exc}") from None
    views = find_layers(
        model, layer_types=tuple(layer_types), include=include, ignore=ignore, include_bias=include_bias
    )
    if not views:
        raise ValueError(
            f"model: no prunable layers (types {[t.__name__ for t in layer_types]}, include={include!r}, "
            f"ignore={list(ignore)!r})"
        )
    devices = {v.weight.device for v in views}
    if len(devices) > 1:
        where = ", ".join(f"{v.name}: {v.weight.device}" for v in views)
        raise ValueError(f"model: prunable layers are on several devices ({where})")
    return views
