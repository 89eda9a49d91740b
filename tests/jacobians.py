"""Dense Jacobians of a model's output w.r.t. its prunable layer matrices, for checking curvature by brute force."""

from __future__ import annotations

import torch
from torch import nn
from torch.func import functional_call, jacrev

from fls_kernels.layers import LayerView


def layer_jacobian(model: nn.Module, views: list[LayerView], x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(output [B, k], J [B, k, d]) with d the concatenated row-major layer matrices (bias columns included);
    the output's non-batch dimensions are flattened into k."""
    mats = [v.matrix() for v in views]

    def f(*ms):
        params = {}
        for v, M in zip(views, ms):
            params.update(zip(v.parameters(), v.split(M)))
        return functional_call(model, params, (x,))

    out = f(*mats)
    jac = jacrev(f, argnums=tuple(range(len(mats))))(*mats)
    B = out.shape[0]
    J = torch.cat([j.reshape(B, out[0].numel(), -1) for j in jac], dim=2)
    return out.reshape(B, -1), J
