"""OBDPruner: Optimal Brain Damage with the diagonal (true, sampled-label) Fisher — score ½ (F̂_qq + γ) θ_q²,
no compensating update; F̂ is recomputed before every pruning sub-step."""

from __future__ import annotations

from torch import Tensor

from fls_kernels.pruning.curvature import CurvaturePruner


class OBDPruner(CurvaturePruner):
    """Diagonal-Fisher saliency with the shared life cycle and selection rules.

    Args: see :class:`~fls_kernels.pruning.curvature.CurvaturePruner` (``stat_batches`` batches per estimate).
    """

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.fisher_diag: list[Tensor] | None = None

    def _fit(self, steps: int) -> list[float]:
        self._recompute()
        return []

    def _recompute(self) -> None:
        stats = self._statistics(kfac=False)
        self._resolve_damping(self.mean_diag(stats))
        self.fisher_diag = [s.diag.to(self._work_dtype()) for s in stats]

    def _is_fitted(self) -> bool:
        return self.fisher_diag is not None

    def _before_substep(self, substep: int) -> None:
        self._recompute()

    def _scores(self, index: int, W: Tensor, alive: Tensor) -> Tensor:
        n = self.views[index].n_weight
        rho = 0.5 * (self.fisher_diag[index][:, :n] + self.damping) * W[:, :n] ** 2
        return rho.masked_fill(~alive[:, :n], float("inf"))

    def _state(self) -> dict:
        return {**self._curvature_state(), "fisher_diag": self.fisher_diag}

    def _load_state(self, state: dict) -> None:
        if state:
            self._load_curvature_state(state)
            self.fisher_diag = state["fisher_diag"]

    def _memory(self) -> dict[str, int]:
        return {"fisher_diag": sum(d.numel() * d.element_size() for d in self.fisher_diag or [])}


__all__ = ["OBDPruner"]
