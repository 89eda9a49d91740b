"""fls_kernels: prune PyTorch models with the FishLeg Surgeon — a learned Kronecker inverse Fisher.

Example:
    >>> import fls_kernels as fls
    >>> pruner = fls.FishLegPruner(model, likelihood="categorical", damping=1e-3)
    >>> pruner.fit(calib_loader, steps=2000)
    >>> pruner.prune(0.9, substeps=16)
"""

from fls_kernels import ops, pruning
from fls_kernels.backends import BackendUnavailableError, use_backend
from fls_kernels.curvature import Bernoulli, Categorical, Gaussian, KronBlock, Likelihood
from fls_kernels.distributed import Distributed, RankFailure
from fls_kernels.ops import *  # noqa: F403  (every op of the table: ops.__all__)
from fls_kernels.pruning import *  # noqa: F403  (every pruner class of the registry, schedules, export)

__version__ = "0.1.0"

__all__ = [
    "BackendUnavailableError",
    "Distributed",
    "RankFailure",
    "Bernoulli",
    "Categorical",
    "Gaussian",
    "KronBlock",
    "Likelihood",
    "__version__",
    "use_backend",
    *ops.__all__,
    *pruning.__all__,
]
