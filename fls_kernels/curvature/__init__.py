"""Curvature floor: Q(λ) blocks per layer, likelihoods, Fisher-vector products and the aux-loss fitter, whose
cross-process reduction (one process, replicated, sharded) is injected (:mod:`.reduction`)."""

from fls_kernels.curvature.blocks import KronBlock, RemoteBlock
from fls_kernels.curvature.fisher import LayerStats, ModelCurvature
from fls_kernels.curvature.fitter import AuxFitter
from fls_kernels.curvature.likelihoods import Bernoulli, Categorical, Gaussian, Likelihood, get_likelihood
from fls_kernels.curvature.reduction import AuxReduction, ReplicatedReduction, ShardedReduction

__all__ = [
    "AuxFitter",
    "AuxReduction",
    "Bernoulli",
    "Categorical",
    "Gaussian",
    "KronBlock",
    "RemoteBlock",
    "ReplicatedReduction",
    "ShardedReduction",
    "LayerStats",
    "Likelihood",
    "ModelCurvature",
    "get_likelihood",
]
