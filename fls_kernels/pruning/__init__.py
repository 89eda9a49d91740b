"""Pruning floor: a :class:`Pruner` facade over typed targets, mask state, one prune step and execution modes,
running one :class:`Method` per pruner (FLS and the baselines, :mod:`.registry`); patterns, schedules, export.
Which layers it prunes is :mod:`fls_kernels.layers`' (selection).

Rooms: ``pruner`` (life cycle, checkpoints) · ``method`` (the method protocol) · ``context`` (what a method
sees) · ``targets`` (sparsity → exact counts, the sub-step path) · ``maskstate`` and ``hooks`` (masks held
through training and reloads) · ``step`` (score → choose → update) · ``execution`` (local, replicated,
sharded) · ``methods/`` (one module per method) · ``registry`` (all methods).
"""

from fls_kernels.pruning.export import export_semi_structured, is_two_four
from fls_kernels.pruning.method import Method
from fls_kernels.pruning.pruner import Pruner
from fls_kernels.pruning.registry import *  # noqa: F403  (every pruner class, and PRUNERS)
from fls_kernels.pruning.registry import __all__ as _pruners
from fls_kernels.pruning.schedules import ConstantSchedule, CubicSchedule, LinearSchedule, Schedule

__all__ = [
    *_pruners,
    "ConstantSchedule",
    "CubicSchedule",
    "LinearSchedule",
    "Method",
    "Pruner",
    "Schedule",
    "export_semi_structured",
    "is_two_four",
]
