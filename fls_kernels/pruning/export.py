"""Export: 2:4-pruned Linear weights to PyTorch's semi-structured sparse layout (cuSPARSELt / CUTLASS)."""

from __future__ import annotations

import torch
from torch import nn


def is_two_four(weight: torch.Tensor) -> bool:
    """True when every group of 4 consecutive inputs of each row holds at least 2 zeros."""
    if weight.dim() != 2 or weight.shape[1] % 4:
        return False
    return bool(((weight.reshape(weight.shape[0], -1, 4) == 0).sum(-1) >= 2).all())


def export_semi_structured(model: nn.Module, *, layers: list[str] | None = None) -> list[str]:
    """Replace the weights of 2:4-sparse ``nn.Linear`` layers by ``torch.sparse.to_sparse_semi_structured``
    tensors (fp16/bf16 on a CUDA device of compute capability ≥ 8.0), in place.

    Args:
        model: a model pruned with ``pattern="2:4"`` (and finalized).
        layers: qualified names to convert (default: every Linear whose weight is 2:4).

    Returns:
        the names of the converted layers.

    Raises:
        RuntimeError: no CUDA device of capability ≥ 8.0 holds the weights.
        TypeError: a selected layer's weight is not fp16/bf16.
        ValueError: a named layer is not a 2:4-sparse Linear.
    """
    linears = {name: m for name, m in model.named_modules() if isinstance(m, nn.Linear)}
    if layers is None:
        names = [name for name, m in linears.items() if is_two_four(m.weight.detach())]
    else:
        missing = [name for name in layers if name not in linears]
        if missing:
            raise ValueError(f"layers: {missing} are not nn.Linear layers of the model")
        names = list(layers)
        bad = [name for name in names if not is_two_four(linears[name].weight.detach())]
        if bad:
            raise ValueError(f"layers: {bad} are not 2:4 sparse (prune with pattern='2:4' first)")
    if not names:
        raise ValueError("model: no 2:4-sparse nn.Linear layer to export")
    for name in names:
        w = linears[name].weight
        if w.device.type != "cuda" or torch.cuda.get_device_capability(w.device) < (8, 0):
            raise RuntimeError(
                f"export_semi_structured: layer {name!r} is on {w.device}; semi-structured sparsity needs a CUDA "
                "device of compute capability ≥ 8.0"
            )
        if w.dtype not in (torch.float16, torch.bfloat16):
            raise TypeError(f"model: layer {name!r} weight is {w.dtype}; convert the model to fp16 or bf16 first")
    from torch.sparse import to_sparse_semi_structured

    for name in names:
        module = linears[name]
        module.weight = nn.Parameter(to_sparse_semi_structured(module.weight.detach()), requires_grad=False)
    return names
