"""Model introspection floor: what a pruner and the curvature see of a model, importing nothing of theirs.

Rooms: ``views`` (:class:`LayerView`: a prunable layer as W ∈ ℝ^{m×n} with its input patches; :func:`find_layers`)
· ``attention`` (packed q/k/v in-projections of ``nn.MultiheadAttention`` as layers, unfused attention for
per-weight measurements) · ``selection`` (which layers a pruner prunes: unwrapping DDP/FSDP, types, include/ignore
patterns, and which weights stay dense, with the reason) · ``blocks`` (a model's repeated blocks, the unit of
block-sequential pruning, and a block run as a model of its own).
"""

from fls_kernels.layers.selection import Unpruned, kept_dense, select_layers, unpruned, unwrap
from fls_kernels.layers.views import SUPPORTED_LAYERS, GPT2Conv1D, LayerView, find_layers, is_gpt2_conv1d

__all__ = [
    "SUPPORTED_LAYERS",
    "GPT2Conv1D",
    "LayerView",
    "Unpruned",
    "find_layers",
    "is_gpt2_conv1d",
    "kept_dense",
    "select_layers",
    "unpruned",
    "unwrap",
]
