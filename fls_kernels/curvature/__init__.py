"""Curvature floor: Q(λ) blocks per layer, likelihoods, Fisher-vector products and the aux-loss fitter."""

from fls_kernels.curvature.blocks import KronBlock, RemoteBlock
from fls_kernels.curvature.fisher import LayerStats, ModelCurvature, eval_mode, split_batch
from fls_kernels.curvature.fitter import AuxFitter
from fls_kernels.curvature.layers import SUPPORTED_LAYERS, LayerView, find_layers
from fls_kernels.curvature.likelihoods import Bernoulli, Categorical, Gaussian, Likelihood, get_likelihood

__all__ = [
    "SUPPORTED_LAYERS",
    "AuxFitter",
    "Bernoulli",
    "Categorical",
    "Gaussian",
    "KronBlock",
    "RemoteBlock",
    "LayerStats",
    "LayerView",
    "Likelihood",
    "ModelCurvature",
    "eval_mode",
    "find_layers",
    "get_likelihood",
    "split_batch",
]
