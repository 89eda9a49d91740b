"""K-FAC-OBS: OBS with Q from the damped, inverted K-FAC factors — no learning, recomputed each pruning step.

Q = (G + γ^½/π I)⁻¹ ⊗ (Ā + π γ^½ I)⁻¹,  π² = (tr Ā / n)/(tr G / m)
"""

from __future__ import annotations

from fls_kernels.pruning.method import Recomputing
from fls_kernels.pruning.methods.kron_obs import KronOBS, estimate_memory
from fls_kernels.pruning.pruner import Pruner


class KFAC(Recomputing, KronOBS):
    """λ set from the K-FAC factors of ``stat_batches`` batches (sampled labels) by ``fit`` and again before every
    pruning sub-step on the current (masked, possibly fine-tuned) model."""

    name = "kfac"
    quick_options = {"stat_batches": 2}

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self._fitted = False

    @property
    def fitted(self) -> bool:
        return self._fitted

    def recompute(self) -> None:
        stats = self.statistics(kfac=True, diag=False)
        damping = self.resolve_damping(self.mean_diag(stats))
        for i, block in self.local_blocks():
            block.init_kfac(stats[i].act_cov, stats[i].grad_cov, damping)
        self._fitted = True

    def state_dict(self) -> dict:
        return {**super().state_dict(), "fitted": self._fitted}

    def load_state_dict(self, state: dict) -> None:
        if state:
            super().load_state_dict(state)
            self._fitted = state["fitted"]


class KFACPruner(Pruner):
    """K-FAC-OBS: same scores, updates, selection and life cycle as :class:`FishLegPruner`, with λ from the
    inverted damped K-FAC factors, recomputed before every pruning sub-step (the first after ``fit`` reads the
    fit's estimate while the model, masks and data are unchanged: :class:`~fls_kernels.pruning.method.Recomputing`).

    Args: ``likelihood``, ``damping`` and the keywords of
    :class:`~fls_kernels.pruning.methods.fisher.FisherMethod` (``stat_batches`` batches per estimate) and
    :class:`~fls_kernels.pruning.methods.kron_obs.KronOBS`, plus the :class:`~fls_kernels.pruning.pruner.Pruner`
    arguments.
    """

    method_class = KFAC
    estimate_memory = staticmethod(estimate_memory)
