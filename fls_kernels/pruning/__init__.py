"""Pruning floor: the pruner life cycle, the FishLeg Surgeon, the baselines, patterns, schedules and export."""

from fls_kernels.pruning.base import BasePruner
from fls_kernels.pruning.coreset import CoresetPruner
from fls_kernels.pruning.curvature import CurvaturePruner
from fls_kernels.pruning.export import export_semi_structured, is_two_four
from fls_kernels.pruning.fishleg import FishLegPruner
from fls_kernels.pruning.kfac import KFACPruner
from fls_kernels.pruning.kron_obs import KronOBSPruner
from fls_kernels.pruning.magnitude import MagnitudePruner
from fls_kernels.pruning.masks import MaskKeeper
from fls_kernels.pruning.obd import OBDPruner
from fls_kernels.pruning.obert import OBERTPruner
from fls_kernels.pruning.schedules import ConstantSchedule, CubicSchedule, LinearSchedule, Schedule

__all__ = [
    "BasePruner",
    "ConstantSchedule",
    "CoresetPruner",
    "CubicSchedule",
    "CurvaturePruner",
    "FishLegPruner",
    "KFACPruner",
    "KronOBSPruner",
    "LinearSchedule",
    "MagnitudePruner",
    "MaskKeeper",
    "OBDPruner",
    "OBERTPruner",
    "Schedule",
    "export_semi_structured",
    "is_two_four",
]
