"""A model's repeated blocks (transformer layers), the unit of block-sequential pruning, and a block run as a model
of its own.

Found automatically as the children of every outermost ``nn.ModuleList`` whose children are all of one class and
hold prunable layers (transformers' ``layer`` / ``layers`` / ``h`` / ``block`` lists, ``nn.TransformerEncoder``'s
``layers``), in model order; or named by a regex over module paths.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

from torch import Tensor, nn

from fls_kernels.layers.views import LayerView

#: key of a captured block batch holding its tokens' 0/1 weights [B, T] (padding 0), read by :class:`BlockRunner`
#: and by the input moments
TOKEN_WEIGHTS = "_token_weights"


@dataclass(frozen=True)
class Block:
    """One repeated block: its qualified ``name``, the ``module``, and the indices of the prunable layers in it (in
    the order of the pruner's views)."""

    name: str
    module: nn.Module
    layers: tuple[int, ...]


def find_blocks(model: nn.Module, views: Sequence[LayerView], pattern: str | None = None) -> list[Block]:
    """The blocks holding ``views``, in model order: the modules whose path fully matches ``pattern`` (outermost
    ones), or by default the children of the outermost ``nn.ModuleList`` s of one child class holding views.

    Raises:
        ValueError: naming ``blocks``: an invalid regex, no block found, or a layer outside every block or tied
            across two.
    """
    if pattern is not None:
        try:
            regex = re.compile(pattern)
        except (re.error, TypeError) as exc:
            raise ValueError(f"blocks: invalid regex {pattern!r}: {exc}") from None
        found = [(name, m) for name, m in model.named_modules() if name and regex.fullmatch(name)]
    else:
        found = [
            (f"{name}.{key}" if name else key, child)
            for name, m in model.named_modules()
            if isinstance(m, nn.ModuleList) and len({type(c) for c in m}) == 1
            for key, child in m.named_children()
        ]
    found = _outermost(found)
    blocks = [
        Block(name, module, tuple(i for i, v in enumerate(views) if _inside(v.name, name))) for name, module in found
    ]
    blocks = [b for b in blocks if b.layers]
    if not blocks:
        how = f"no module path matches {pattern!r}" if pattern is not None else "no nn.ModuleList of repeated blocks"
        raise ValueError(f"blocks: {how} holds a prunable layer; name the blocks with blocks= (a regex of paths)")
    covered = {i for b in blocks for i in b.layers}
    outside = [v.name for i, v in enumerate(views) if i not in covered]
    if outside:
        raise ValueError(
            f"blocks: layers outside the blocks ({', '.join(b.name for b in blocks[:3])}, …): {', '.join(outside)}; "
            "block-sequential pruning prunes the blocks' layers only: leave these out with ignore= or name blocks "
            "holding them with blocks="
        )
    for b in blocks:
        for i in b.layers:
            stray = [a for a in views[i].aliases if not _inside(a, b.name)]
            if stray:
                raise ValueError(
                    f"blocks: layer {views[i].name!r} shares its weight with {stray[0]!r} outside block {b.name!r}; "
                    "a tied weight cannot be pruned block by block (whole-model mode prunes it)"
                )
    return blocks


def _inside(name: str, block: str) -> bool:
    return name.startswith(f"{block}.")


def _outermost(found: list[tuple[str, nn.Module]]) -> list[tuple[str, nn.Module]]:
    kept: list[tuple[str, nn.Module]] = []
    for name, module in found:
        if not any(_inside(name, outer) for outer, _ in kept):
            kept.append((name, module))
    return kept


class BlockRunner(nn.Module):
    """``block`` as a model of its own, registered under its qualified ``path`` in the model (so that its parameters
    keep their names): ``forward(**inputs)`` is the block's output tensor y = block(**inputs) (a tuple's first
    element), times the token weights w [B, T] under :data:`TOKEN_WEIGHTS` where given (y ⊙ w, padding zeroed) —
    what the curvature, the statistics and the input moments run on a block's captured inputs."""

    def __init__(self, path: str, block: nn.Module) -> None:
        super().__init__()
        parent: nn.Module = self
        *heads, last = path.split(".")
        for part in heads:
            child = nn.Module()
            parent.add_module(part, child)
            parent = child
        parent.add_module(last, block)
        self.block_path = path

    @property
    def block(self) -> nn.Module:
        return self.get_submodule(self.block_path)

    def forward(self, **inputs: object) -> Tensor:
        weights = inputs.pop(TOKEN_WEIGHTS, None)
        out = block_output(self.block(**inputs))
        if isinstance(weights, Tensor):
            out = out * weights.to(out.dtype).reshape(*weights.shape, *(1,) * (out.dim() - weights.dim()))
        return out


def block_output(out: object) -> Tensor:
    """The hidden states a block returns: a tensor, or a tuple's / list's first element.

    Raises:
        TypeError: naming ``blocks`` when it is neither.
    """
    if isinstance(out, (tuple, list)) and out:
        out = out[0]
    if not isinstance(out, Tensor):
        raise TypeError(f"blocks: a block returned {type(out).__name__}, expected a tensor or a tuple led by one")
    return out
