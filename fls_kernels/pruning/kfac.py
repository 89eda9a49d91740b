"""KFACPruner: OBS with Q from the damped, inverted K-FAC factors — no learning, recomputed each pruning step.

Q = (G + γ^½/π I)⁻¹ ⊗ (Ā + π γ^½ I)⁻¹,  π² = (tr Ā / n)/(tr G / m)
"""

from __future__ import annotations

from fls_kernels.pruning.kron_obs import KronOBSPruner, local_blocks


class KFACPruner(KronOBSPruner):
    """K-FAC-OBS: same scores, updates, selection and life cycle as :class:`FishLegPruner`, with λ set from the
    K-FAC factors (``stat_batches`` batches of sampled-label statistics) by :meth:`fit` and again before every
    pruning sub-step on the current (masked, possibly fine-tuned) model.

    Args: see :class:`~fls_kernels.pruning.curvature.CurvaturePruner` and :class:`KronOBSPruner`.
    """

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self._fitted = False

    def _fit(self, steps: int) -> list[float]:
        self._recompute()
        return []

    def _recompute(self) -> None:
        stats = self._statistics(kfac=True)
        damping = self._resolve_damping(self.mean_diag(stats))
        for i, block in local_blocks(self):
            block.init_kfac(stats[i].act_cov, stats[i].grad_cov, damping)
        self._fitted = True

    def _is_fitted(self) -> bool:
        return self._fitted

    def _before_substep(self, substep: int) -> None:
        self._recompute()

    def _state(self) -> dict:
        return {**self._curvature_state(), "blocks": self.blocks.state_dict(), "fitted": self._fitted}

    def _load_state(self, state: dict) -> None:
        if not state:
            return
        self._load_curvature_state(state)
        self.blocks.load_state_dict(state["blocks"])
        self._fitted = state["fitted"]
