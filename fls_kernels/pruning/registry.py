"""Every pruning method, one line each: its pruner class, by the method's name.

``fls_kernels`` exports each class under its own name; the benchmarks' quality studies build their pruners from
here (every method listed runs in them) and the parametrised tests run every one. A new method is one module in
:mod:`fls_kernels.pruning.methods` (with its ``quick_options`` for smoke runs) and one line below.
"""

from __future__ import annotations

from fls_kernels.pruning.methods.coreset import CoresetPruner
from fls_kernels.pruning.methods.fishleg import FishLegPruner
from fls_kernels.pruning.methods.kfac import KFACPruner
from fls_kernels.pruning.methods.magnitude import MagnitudePruner
from fls_kernels.pruning.methods.obd import OBDPruner
from fls_kernels.pruning.methods.obert import OBERTPruner
from fls_kernels.pruning.methods.sparsegpt import SparseGPTPruner
from fls_kernels.pruning.methods.wanda import WandaPruner
from fls_kernels.pruning.pruner import Pruner

_ALL: tuple[type[Pruner], ...] = (
    FishLegPruner,
    MagnitudePruner,
    OBDPruner,
    OBERTPruner,
    KFACPruner,
    CoresetPruner,
    SparseGPTPruner,
    WandaPruner,
)

#: method name (e.g. "fls") → its pruner class
PRUNERS: dict[str, type[Pruner]] = {cls.method_class.name: cls for cls in _ALL}

__all__ = ["PRUNERS", *(cls.__name__ for cls in _ALL)]
