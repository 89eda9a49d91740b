"""Which layers a pruner prunes: the model unwrapped from DDP/FSDP, layers by type, regex and ignore list; and
which weights it leaves alone, with the reason (:func:`unpruned`)."""

from __future__ import annotations

import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

from torch import nn
from torch.nn.parallel import DistributedDataParallel

from fls_kernels.layers.views import SUPPORTED_LAYERS, LayerView, find_layers


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
    _check_patterns(model, include, ignore)
    heads = _default_heads(model, include)
    views = find_layers(
        model,
        layer_types=tuple(layer_types),
        include=include,
        ignore=ignore + tuple(re.escape(path) for path in heads),
        include_bias=include_bias,
    )
    if not views:
        dense = f", the output head {heads[0]!r} dense by default (include= it)" if heads else ""
        raise ValueError(
            f"model: no prunable layers (types {[t.__name__ for t in layer_types]}, include={include!r}, "
            f"ignore={list(ignore)!r}{dense}); {_some_layers(model)}"
        )
    _check_sharing(model, views)
    devices = {v.weight.device for v in views}
    if len(devices) > 1:
        where = ", ".join(f"{v.name}: {v.weight.device}" for v in views)
        raise ValueError(f"model: prunable layers are on several devices ({where})")
    return views


def kept_dense(model: nn.Module) -> dict[str, str]:
    """Module path → what it is, of the modules a transformers-style model (one with ``get_input_embeddings``) keeps
    dense by default: its embedding tables and its output head (``get_output_embeddings``: an LM head, tied to
    the input embedding or not). Other models: none."""
    if not callable(getattr(model, "get_input_embeddings", None)):
        return {}
    found = {path: "embedding" for path, m in model.named_modules() if isinstance(m, (nn.Embedding, nn.EmbeddingBag))}
    getter = getattr(model, "get_output_embeddings", None)
    try:
        head = getter() if callable(getter) else None
    except (NotImplementedError, AttributeError):
        head = None
    if isinstance(head, nn.Module):
        found.update({path: "output head" for path, m in model.named_modules() if m is head})
    return found


def _default_heads(model: nn.Module, include: str | None) -> list[str]:
    """The output heads left out by default: all of :func:`kept_dense`'s, but one that ``include`` names."""
    return [
        path
        for path, what in kept_dense(model).items()
        if what == "output head" and not (include is not None and re.fullmatch(include, path))
    ]


def _names(model: nn.Module) -> list[str]:
    """Every name a pattern can act on: the paths of the modules holding parameters themselves (the model itself
    is ""), and ``<attn>.in_proj`` of each MultiheadAttention."""
    names = []
    for path, module in model.named_modules():
        if next(module.parameters(recurse=False), None) is not None:
            names.append(path)
        if isinstance(module, nn.MultiheadAttention):
            names.append(f"{path}.in_proj" if path else "in_proj")
    return names


def _some_layers(model: nn.Module, shown: int = 6) -> str:
    names = [v.name for v in find_layers(model)]
    more = f" … ({len(names)} in all)" if len(names) > shown else ""
    return f"its layers: {', '.join(map(repr, names[:shown])) or 'none'}{more}"


def _check_patterns(model: nn.Module, include: str | None, ignore: tuple[str, ...]) -> None:
    """ValueError naming an ``include`` / ``ignore`` pattern that fully matches the name of no layer or module
    holding weights: it would select or leave out nothing, silently."""
    names = _names(model)
    for arg, patterns in (("include", [include] if include is not None else []), ("ignore", ignore)):
        for pattern in patterns:
            if any(re.fullmatch(pattern, n) for n in names):
                continue
            part = [n for n in names if n and re.search(pattern, n)]
            hint = (
                f"; it is only part of {', '.join(map(repr, part[:3]))}: write e.g. {f'.*{pattern}.*'!r}"
                if part
                else ""
            )
            raise ValueError(
                f"{arg}: pattern {pattern!r} matches no layer or module holding weights (a pattern must match the "
                f"whole qualified name){hint}; {_some_layers(model)}"
            )


def _check_sharing(model: nn.Module, views: Sequence[LayerView]) -> None:
    """ValueError when a pruned tensor is also held by a module outside its view (a tied embedding, a layer left
    out by include/ignore): pruning it would change that use too, whose curvature no view measures."""
    holders: dict[int, list[str]] = {}
    for path, _, key, p in _holdings(model):
        holders.setdefault(id(p), []).append(f"{path}.{key}" if path else key)
    for v in views:
        mine = set(v.parameters()) | {f"{name}.{key}" for name in v.aliases for key in ("weight", "bias")}
        for pname, p in v.parameters().items():
            others = [h for h in holders.get(id(p), []) if h not in mine]
            if others:
                raise ValueError(
                    f"model: {pname!r} is the same tensor as {others[0]!r}, which is not pruned as a layer (pruning "
                    f"one prunes both, and that use's curvature is not measured); leave it out with "
                    f"ignore=({v.name!r},) or untie them"
                )


@dataclass(frozen=True)
class Unpruned:
    """A weight (parameter of ≥ 2 dims) that no prunable layer covers.

    Attributes:
        name: its qualified name; shape: its shape; reason: why it is not pruned;
        explicit: whether it is left out on purpose — by the user's ``include`` / ``ignore`` / ``layer_types``, or
            by default (``by_default``) — rather than because its type cannot be pruned;
        by_default: an embedding or the output head of a transformers-style model (:func:`kept_dense`).
    """

    name: str
    shape: tuple[int, ...]
    reason: str
    explicit: bool
    by_default: bool = False


def unpruned(
    model: nn.Module,
    views: Sequence[LayerView],
    *,
    layer_types: Sequence[type[nn.Module]],
    include: str | None,
    ignore: Sequence[str] | str,
) -> list[Unpruned]:
    """Every weight of ``model`` (each shared tensor once) that ``views`` do not cover, in module order."""
    ignore = (ignore,) if isinstance(ignore, str) else tuple(ignore)
    seen = {id(p) for v in views for p in v.parameters().values()}
    dense = kept_dense(model)
    heads = {id(p): path for path, module, key, p in _holdings(model) if dense.get(path) == "output head"}
    out = []
    for path, module, key, p in _holdings(model):
        if p.dim() < 2 or id(p) in seen:
            continue
        seen.add(id(p))
        kind = type(module).__name__
        if include is not None and not re.fullmatch(include, path):
            reason, explicit = f"{path or 'the model'!r} does not match include={include!r}", True
        elif any(re.fullmatch(pattern, path) for pattern in ignore):
            reason, explicit = f"{path!r} matches ignore", True
        elif path in dense:
            how = ", include= a pattern naming it prunes it" if dense[path] == "output head" else ""
            tied = f", tied to the output head {heads[id(p)]!r}" if id(p) in heads and heads[id(p)] != path else ""
            reason = f"the model's {dense[path]}{tied}: dense by default{how}"
            out.append(Unpruned(f"{path}.{key}" if path else key, tuple(p.shape), reason, True, by_default=True))
            continue
        elif isinstance(module, SUPPORTED_LAYERS) and key in ("weight", "in_proj_weight"):
            reason, explicit = f"{kind} is not in layer_types", True
        else:
            reason, explicit = f"{kind}.{key}: not a supported layer", False
        out.append(Unpruned(f"{path}.{key}" if path else key, tuple(p.shape), reason, explicit))
    return out


def _holdings(model: nn.Module) -> Iterator[tuple[str, nn.Module, str, nn.Parameter]]:
    """(module path, module, key, parameter) for every parameter each module holds directly — a shared tensor
    once per module holding it."""
    for path, module in model.named_modules():
        for key, p in module.named_parameters(recurse=False):
            yield path, module, key, p
