"""Pruning floor: the pruner life cycle, FishLeg Surgeon and the baselines."""

from fls_kernels.pruning.base import BasePruner
from fls_kernels.pruning.fishleg import FishLegPruner
from fls_kernels.pruning.magnitude import MagnitudePruner
from fls_kernels.pruning.masks import MaskKeeper

__all__ = ["BasePruner", "FishLegPruner", "MagnitudePruner", "MaskKeeper"]
