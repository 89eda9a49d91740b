"""Sparsity patterns: which sets of weights are removed together.

- ``"unstructured"``: any weight.
- ``"N:M"`` (e.g. ``"2:4"``): in every group of M consecutive inputs of each output row, N weights are zero —
  the layout the GPU's semi-structured sparsity needs. Reached in steps of whole zeros per group.
- ``"block{R}x{C}"`` (e.g. ``"block4x4"``, ``"block1x4"``): R×C tiles of the [out, in] weight matrix are removed
  whole; a tile's score is the sum of its weights' scores (or, for curvature methods, the exact group OBS
  loss ½ θ_Pᵀ (Q_PP)⁻¹ θ_P when ``block_score="exact"``).
Patterns apply to the weight columns of a layer's matrix view (never its bias column).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from torch import Tensor

from fls_kernels.layers.views import LayerView


@dataclass(frozen=True)
class Pattern:
    """Unstructured: the unit of removal is one weight."""

    rows: int = 1
    cols: int = 1

    @property
    def size(self) -> int:
        """Weights per unit of removal."""
        return self.rows * self.cols

    def check(self, views: list[LayerView]) -> None:
        """ValueError naming ``pattern`` and the layer when a layer's shape does not tile."""
        for v in views:
            if v.m % self.rows or v.n_weight % self.cols:
                raise ValueError(
                    f"pattern: layer {v.name!r} has a {v.m}×{v.n_weight} weight matrix, not divisible into "
                    f"{self.rows}×{self.cols} blocks; ignore the layer or choose another pattern"
                )

    def units(self, view: LayerView) -> int:
        return view.m * view.n_weight // self.size

    def reduce(self, scores: Tensor) -> Tensor:
        """Per-weight scores [m, n_w] → per-unit scores [m/R, n_w/C] (sum; +inf stays +inf)."""
        if self.size == 1:
            return scores
        m, n = scores.shape
        return scores.reshape(m // self.rows, self.rows, n // self.cols, self.cols).sum(dim=(1, 3))

    def expand(self, chosen: Tensor) -> Tensor:
        """Per-unit bool [m/R, n_w/C] → per-weight bool [m, n_w]."""
        if self.size == 1:
            return chosen
        return chosen.repeat_interleave(self.rows, 0).repeat_interleave(self.cols, 1)

    def __str__(self) -> str:
        return "unstructured" if self.size == 1 else f"block{self.rows}x{self.cols}"


@dataclass(frozen=True)
class NMPattern:
    """N:M — N zeros in every M consecutive inputs of each row."""

    n: int
    m: int

    size = 1  # counted in weights; selection is per group of M

    def check(self, views: list[LayerView]) -> None:
        for v in views:
            if v.n_weight % self.m:
                raise ValueError(
                    f"pattern: layer {v.name!r} has {v.n_weight} inputs, not divisible into groups of M={self.m}; "
                    "ignore the layer or choose another pattern"
                )

    def __str__(self) -> str:
        return f"{self.n}:{self.m}"


def parse_pattern(spec: object) -> Pattern | NMPattern:
    """``"unstructured"``, ``"N:M"`` or ``"block{R}x{C}"`` → a pattern; ValueError naming ``pattern`` otherwise."""
    if isinstance(spec, (Pattern, NMPattern)):
        return spec
    if not isinstance(spec, str):
        raise TypeError(f"pattern: expected a string such as '2:4', got {type(spec).__name__}")
    if spec == "unstructured":
        return Pattern()
    if match := re.fullmatch(r"(\d+):(\d+)", spec):
        n, m = int(match[1]), int(match[2])
        if not 0 < n < m:
            raise ValueError(f"pattern: N:M needs 0 < N < M, got {spec!r}")
        return NMPattern(n, m)
    if match := re.fullmatch(r"block(\d+)x(\d+)", spec):
        r, c = int(match[1]), int(match[2])
        if r < 1 or c < 1:
            raise ValueError(f"pattern: block sizes must be ≥ 1, got {spec!r}")
        return Pattern(r, c)
    raise ValueError(
        f"pattern: expected 'unstructured', 'N:M' (e.g. '2:4') or 'blockRxC' (e.g. 'block4x4'), got {spec!r}"
    )
