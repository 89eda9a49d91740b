"""SparseGPT run the way its authors' code runs it, for wall-time and cross-checks against the library.

Written here from the paper (Frantar & Alistarh, 2023, Algorithm 1) and the published flow, with no library code:
the first block's inputs are captured once; then per block, every Linear's H = (2/N) Σ x xᵀ is accumulated in one
pass of the block over the (dense-within-the-block) inputs, each Linear is pruned by the lazy-block OBS
elimination, and the block's outputs are recomputed as the next block's inputs. Every token counts (no padding
weights), as in the published code.
"""

from __future__ import annotations

import inspect
from collections.abc import Sequence

import torch
from torch import Tensor, nn


class _Stop(Exception):
    pass


@torch.no_grad()
def prune(
    model: nn.Module,
    blocks: Sequence[nn.Module],
    batches: Sequence[dict],
    sparsity: float,
    *,
    n: int = 0,
    m: int = 0,
    dampening: float = 0.01,
    blocksize: int = 128,
) -> None:
    """Prune every ``nn.Linear`` of ``blocks`` (a chain: each block's first argument the previous block's output)
    to ``sparsity``, or ``n``:``m``, on the model inputs ``batches`` (mappings of keyword arguments)."""
    inputs: list[tuple[tuple, dict]] = []

    def grab(module, args, kwargs):
        inputs.append((args, kwargs))
        raise _Stop

    handle = blocks[0].register_forward_pre_hook(grab, with_kwargs=True)
    try:
        for batch in batches:
            try:
                model(**batch)
            except _Stop:
                pass
    finally:
        handle.remove()
    signature = inspect.signature(blocks[0].forward)
    first = next(iter(signature.parameters))
    calls = [signature.bind(*a, **k).arguments for a, k in inputs]
    for block in blocks:
        linears = {name: mod for name, mod in block.named_modules() if isinstance(mod, nn.Linear)}
        hessians = {name: _Hessian(mod.in_features, mod.weight.device) for name, mod in linears.items()}
        handles = [
            mod.register_forward_hook(lambda mod, a, out, h=hessians[name]: h.add(a[0]))
            for name, mod in linears.items()
        ]
        try:
            for call in calls:
                block(**call)
        finally:
            for h in handles:
                h.remove()
        for name, mod in linears.items():
            _prune_linear(mod.weight, hessians[name].H, sparsity, n, m, dampening, blocksize)
        for call in calls:
            out = block(**call)
            call[first] = out[0] if isinstance(out, tuple) else out


class _Hessian:
    """Running H = (2/N) Σ x xᵀ over the rows seen (the published running-mean form)."""

    def __init__(self, columns: int, device: torch.device) -> None:
        self.H = torch.zeros(columns, columns, device=device)
        self.seen = 0

    def add(self, x: Tensor) -> None:
        x = x.reshape(-1, x.shape[-1]).float()
        rows = x.shape[0]
        self.H *= self.seen / (self.seen + rows)
        self.seen += rows
        x = x * (2 / self.seen) ** 0.5
        self.H += x.T @ x


def _prune_linear(weight: Tensor, H: Tensor, sparsity: float, n: int, m: int, dampening: float, blocksize: int) -> None:
    """Algorithm 1: columns eliminated left to right with the upper Cholesky factor of H⁻¹, masks chosen per lazy
    block of ``blocksize`` columns (the smallest w² / [H⁻¹]_jj² over the block, or per group of m at its first
    column), the rest of the matrix updated once per block."""
    W = weight.float().clone()
    rows, cols = W.shape
    dead = torch.diag(H) == 0
    H[dead, dead] = 1
    W[:, dead] = 0
    H += dampening * torch.mean(torch.diag(H)) * torch.eye(cols, device=W.device)
    Hinv = torch.linalg.cholesky(torch.cholesky_inverse(torch.linalg.cholesky(H)), upper=True)
    for i1 in range(0, cols, blocksize):
        i2 = min(i1 + blocksize, cols)
        W1, Hinv1 = W[:, i1:i2].clone(), Hinv[i1:i2, i1:i2]
        Err1 = torch.zeros_like(W1)
        if not n:
            score = W1.square() / torch.diag(Hinv1).reshape(1, -1).square()
            threshold = torch.sort(score.flatten())[0][int(score.numel() * sparsity)]
            prune = score <= threshold
        else:
            prune = torch.zeros_like(W1, dtype=torch.bool)
        for i in range(i2 - i1):
            w, d = W1[:, i], Hinv1[i, i]
            if n and i % m == 0:
                group = W1[:, i : i + m].square() / torch.diag(Hinv1)[i : i + m].reshape(1, -1).square()
                prune.scatter_(1, i + torch.topk(group, n, dim=1, largest=False)[1], True)
            q = w.clone()
            q[prune[:, i]] = 0
            err = (w - q) / d
            W1[:, i:] -= err.unsqueeze(1) @ Hinv1[i, i:].unsqueeze(0)
            W1[:, i] = q
            Err1[:, i] = err
        W[:, i1:i2] = W1
        W[:, i2:] -= Err1 @ Hinv[i1:i2, i2:]
    weight.copy_(W.to(weight.dtype))
