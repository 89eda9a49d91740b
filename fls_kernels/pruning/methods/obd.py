"""Optimal Brain Damage with the diagonal (true, sampled-label) Fisher — score ½ (F̂_qq + γ) θ_q², no
compensating update; F̂ is recomputed before every pruning sub-step (the first after ``fit`` reads the fit's
estimate while nothing it came from changed: :class:`~fls_kernels.pruning.method.Recomputing`)."""

from __future__ import annotations

from torch import Tensor

from fls_kernels.pruning.method import Recomputing
from fls_kernels.pruning.methods.fisher import FisherMethod
from fls_kernels.pruning.pruner import Pruner


class OBD(Recomputing, FisherMethod):
    """Diagonal-Fisher saliency from ``stat_batches`` batches per estimate."""

    name = "obd"
    quick_options = {"stat_batches": 2}

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.fisher_diag: list[Tensor] | None = None

    @property
    def fitted(self) -> bool:
        return self.fisher_diag is not None

    def recompute(self) -> None:
        stats = self.statistics(kfac=False)
        self.resolve_damping(self.mean_diag(stats))
        self.fisher_diag = [s.diag.to(self.ctx.dtype) for s in stats]

    def scores(self, index: int, W: Tensor, alive: Tensor) -> Tensor:
        n = self.ctx.views[index].n_weight
        rho = 0.5 * (self.fisher_diag[index][:, :n] + self.damping) * W[:, :n] ** 2
        return rho.masked_fill(~alive[:, :n], float("inf"))

    def state_dict(self) -> dict:
        return {**super().state_dict(), "fisher_diag": self.fisher_diag}

    def load_state_dict(self, state: dict) -> None:
        if state:
            super().load_state_dict(state)
            self.fisher_diag = state["fisher_diag"]

    def memory(self) -> dict[str, int]:
        return {"fisher_diag": sum(d.numel() * d.element_size() for d in self.fisher_diag or [])}


class OBDPruner(Pruner):
    """Optimal Brain Damage: diagonal-Fisher saliency with the shared life cycle and selection rules.

    Args: ``likelihood``, ``damping`` and the keywords of
    :class:`~fls_kernels.pruning.methods.fisher.FisherMethod`, plus the
    :class:`~fls_kernels.pruning.pruner.Pruner` arguments.
    """

    method_class = OBD
