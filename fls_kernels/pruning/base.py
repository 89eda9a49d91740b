"""The pruner life cycle shared by FishLeg and every baseline.

    pruner = SomePruner(model, ...)      # picks layers (type, name regex, ignore list); masks all True
    pruner.fit(loader, steps)            # curvature, where the method has one
    pruner.prune(0.9, substeps=16)       # scores → selection → update, exact sparsity, all-or-nothing
    pruner.finalize()                    # bake zeros, remove hooks

A prune step either completes or leaves the model (and the pruner) exactly as it was.
"""

from __future__ import annotations

import copy
import logging
import math
import numbers
import re
from collections.abc import Iterator, Mapping, Sequence

import torch
from torch import Tensor, nn

from fls_kernels.curvature.fisher import split_batch
from fls_kernels.curvature.layers import SUPPORTED_LAYERS, LayerView, find_layers
from fls_kernels.pruning import selection
from fls_kernels.pruning.masks import MaskKeeper

log = logging.getLogger("fls_kernels.prune")


class BasePruner:
    """Layer selection, masks, the prune step and checkpoints; subclasses define scores and updates.

    Args:
        model: the network to prune in place.
        layer_types: module types to prune (subset of Linear, Conv2d).
        include: regex the qualified layer name must fully match (None: every layer of those types).
        ignore: regexes of layer names to leave dense.
        allocation: "global" (one ranking over all layers, default) or "uniform" (each layer to the same
            sparsity); a per-layer dict can also be passed to :meth:`prune`.
        include_bias: fold biases into the layer matrices (they are never pruned, but may be updated).
        backend: force an ops backend for every step (default: automatic).
    """

    #: bump when the state_dict layout changes
    STATE_VERSION = 1

    def __init__(
        self,
        model: nn.Module,
        *,
        layer_types: Sequence[type[nn.Module]] = SUPPORTED_LAYERS,
        include: str | None = None,
        ignore: Sequence[str] = (),
        allocation: str = "global",
        include_bias: bool = True,
        backend: str | None = None,
    ) -> None:
        if not isinstance(model, nn.Module):
            raise TypeError(f"model: expected an nn.Module, got {type(model).__name__}")
        if allocation not in selection.ALLOCATIONS:
            raise ValueError(f"allocation: expected one of {selection.ALLOCATIONS}, got {allocation!r}")
        if isinstance(ignore, str):
            ignore = (ignore,)
        for pattern in ([include] if include is not None else []) + list(ignore):
            try:
                re.compile(pattern)
            except (re.error, TypeError) as exc:
                raise ValueError(f"include/ignore: invalid regex {pattern!r}: {exc}") from None
        self.model = model
        self.allocation = allocation
        self.backend = backend
        self.views: list[LayerView] = find_layers(
            model, layer_types=tuple(layer_types), include=include, ignore=tuple(ignore), include_bias=include_bias
        )
        if not self.views:
            raise ValueError(
                f"model: no prunable layers (types {[t.__name__ for t in layer_types]}, include={include!r}, "
                f"ignore={list(ignore)!r})"
            )
        devices = {v.weight.device for v in self.views}
        if len(devices) > 1:
            where = ", ".join(f"{v.name}: {v.weight.device}" for v in self.views)
            raise ValueError(f"model: prunable layers are on several devices ({where})")
        self.device = devices.pop()
        #: layer name → bool mask shaped like its weight (True = alive)
        self.masks: dict[str, Tensor] = {v.name: torch.ones_like(v.weight, dtype=torch.bool) for v in self.views}
        self._keeper = MaskKeeper(model, {v.weight: self.masks[v.name] for v in self.views})
        self._keeper.attach()
        self._finalized = False

    # ------------------------------------------------------------------------------------------ reporting
    @property
    def layer_names(self) -> list[str]:
        return [v.name for v in self.views]

    def num_prunable(self) -> int:
        """d: the number of prunable weights (biases excluded)."""
        return sum(v.m * v.n_weight for v in self.views)

    def num_pruned(self) -> int:
        return sum(int((~m).sum()) for m in self.masks.values())

    def sparsity(self) -> float:
        """Fraction of prunable weights removed."""
        return self.num_pruned() / self.num_prunable()

    def layer_sparsity(self) -> dict[str, float]:
        """Layer name → fraction of its weights removed."""
        return {name: 1.0 - m.float().mean().item() for name, m in self.masks.items()}

    # ------------------------------------------------------------------------------------------ subclass API
    def _scores(self, index: int, W: Tensor, alive: Tensor) -> Tensor:
        """Saliency of each weight of layer ``index``: [m, n_weight], +inf where pruned. W, alive: [m, n]."""
        raise NotImplementedError

    def _update(self, index: int, W: Tensor, prune: Tensor, keep: Tensor) -> None:
        """Apply the removal to W ([m, n], in place): default zeroes the removed weights only."""
        W.masked_fill_(~keep, 0)

    def _before_substep(self, substep: int) -> None:
        """Called before each sub-step's scoring (e.g. to refine curvature on the current masks)."""

    def _state(self) -> dict:
        """Extra state of the method, for :meth:`state_dict` and the all-or-nothing snapshot."""
        return {}

    def _load_state(self, state: dict) -> None:
        """Restore what :meth:`_state` returned."""

    # ------------------------------------------------------------------------------------------ helpers
    def _work_dtype(self) -> torch.dtype:
        dtype = self.views[0].weight.dtype
        return dtype if dtype in (torch.float32, torch.float64) else torch.float32

    def full_mask(self, index: int) -> Tensor:
        """Layer ``index``'s alive mask as an [m, n] matrix (the bias column always alive)."""
        view = self.views[index]
        mask = self.masks[view.name].reshape(view.m, view.n_weight)
        if view.has_bias:
            mask = torch.cat([mask, mask.new_ones(view.m, 1)], dim=1)
        return mask

    def _check_alive(self) -> None:
        if self._finalized:
            raise RuntimeError("this pruner was finalized; create a new one to prune again")

    def _check_weights(self) -> None:
        for view in self.views:
            for name, p in view.parameters().items():
                if not bool(torch.isfinite(p.detach()).all()):
                    raise ValueError(f"model: parameter {name!r} contains NaN or Inf; nothing was pruned")

    def _check_batch(self, batch: object, argname: str = "loader") -> None:
        args, kwargs = split_batch(batch)
        for t in list(args) + list(kwargs.values()):
            if isinstance(t, Tensor) and t.device != self.device:
                raise ValueError(f"{argname}: batch is on {t.device} but the model is on {self.device}")

    def _batches(self, loader: object, argname: str = "loader") -> Iterator[object]:
        """Endless batches from a re-iterable ``loader``; ValueError when it yields nothing."""
        if loader is None or not hasattr(loader, "__iter__"):
            raise TypeError(f"{argname}: expected an iterable of batches, got {type(loader).__name__}")
        first_pass = iter(loader)
        try:
            first = next(first_pass)
        except StopIteration:
            raise ValueError(f"{argname}: yielded no batches") from None
        self._check_batch(first, argname)

        def cycle() -> Iterator[object]:
            yield first
            yield from first_pass
            while True:
                seen = False
                for batch in loader:
                    seen = True
                    yield batch
                if not seen:
                    raise ValueError(f"{argname}: yielded no batches on a later pass (use a re-iterable loader)")

        return cycle()

    def _parse_target(self, sparsity: object) -> tuple[int | None, dict[str, int] | None]:
        """Validate ``sparsity``; return the global target count or per-layer target counts."""
        current = self.layer_sparsity()

        def check(value: object, what: str) -> float:
            if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(value):
                raise TypeError(f"{what}: expected a real number in [0, 1), got {value!r}")
            if not 0 <= value < 1:
                raise ValueError(f"{what}: must be in [0, 1), got {value}")
            return float(value)

        if isinstance(sparsity, Mapping):
            unknown = set(sparsity) - set(current)
            if unknown:
                raise ValueError(f"sparsity: unknown layers {sorted(unknown)}; prunable: {sorted(current)}")
            for name, value in sparsity.items():
                check(value, f"sparsity[{name!r}]")
        else:
            check(sparsity, "sparsity")
        targets = selection.per_layer_targets(sparsity, self.layer_names, current, self.allocation)
        if targets is None:
            k = selection.count(float(sparsity), self.num_prunable())
            if k < self.num_pruned():
                raise ValueError(f"sparsity: {sparsity} is below the current sparsity {self.sparsity():.6f}")
            return k, None
        counts = {}
        for view in self.views:
            k = selection.count(targets[view.name], view.m * view.n_weight)
            if k < int((~self.masks[view.name]).sum()):
                raise ValueError(
                    f"sparsity: {targets[view.name]} for layer {view.name!r} is below its current sparsity "
                    f"{current[view.name]:.6f}"
                )
            counts[view.name] = k
        return None, counts

    # ------------------------------------------------------------------------------------------ the step
    def prune(self, sparsity: float | Mapping[str, float], substeps: int = 1) -> float:
        """Prune to ``sparsity`` in ``substeps`` steps along a cubic path from the current sparsity.

        With global allocation exactly ⌈s·d⌉ of the d prunable weights are zero afterwards (per layer for
        uniform allocation or a dict); pruned weights are exactly 0 and never come back.

        Args:
            sparsity: target in [0, 1), or layer name → target (layers left out keep their sparsity).
            substeps: K ≥ 1 scoring/selection/update rounds.

        Returns:
            the overall sparsity reached.

        Raises:
            ValueError / TypeError: bad ``sparsity``/``substeps`` or NaN/Inf weights; the model is untouched.
        """
        self._check_alive()
        if isinstance(substeps, bool) or not isinstance(substeps, int) or substeps < 1:
            raise ValueError(f"substeps: expected an int ≥ 1, got {substeps!r}")
        total_k, layer_k = self._parse_target(sparsity)
        self._check_weights()
        snapshot = self._snapshot()
        try:
            self._run_substeps(total_k, layer_k, substeps)
        except BaseException:
            self._restore(snapshot)
            raise
        return self.sparsity()

    def _run_substeps(self, total_k: int | None, layer_k: dict[str, int] | None, substeps: int) -> None:
        d = self.num_prunable()
        start_total = self.num_pruned()
        start_layer = {v.name: int((~self.masks[v.name]).sum()) for v in self.views}
        for step in range(substeps):
            frac = 1 - (1 - (step + 1) / substeps) ** 3  # cubic path, 1 at the last sub-step
            if total_k is not None:
                goal: int | list[int] = start_total + math.ceil(round((total_k - start_total) * frac, 9))
                new: int | list[int] = goal - self.num_pruned()
            else:
                goal = [
                    start_layer[v.name] + math.ceil(round((layer_k[v.name] - start_layer[v.name]) * frac, 9))
                    for v in self.views
                ]
                new = [g - int((~self.masks[v.name]).sum()) for g, v in zip(goal, self.views)]
            if (new if isinstance(new, int) else sum(new)) == 0:
                continue
            self._before_substep(step)
            dtype = self._work_dtype()
            mats = [v.matrix(dtype) for v in self.views]
            alive = [self.full_mask(i) for i in range(len(self.views))]
            scores = [self._scores(i, W, alive[i]) for i, W in enumerate(mats)]
            chosen = selection.select(scores, new, backend=self.backend)
            for i, (view, W) in enumerate(zip(self.views, mats)):
                prune = chosen[i]
                if view.has_bias:
                    prune = torch.cat([prune, prune.new_zeros(view.m, 1)], dim=1)
                keep = alive[i] & ~prune
                self._update(i, W, prune, keep)
                view.write(W)
                self.masks[view.name].copy_(keep[:, : view.n_weight].reshape(view.weight.shape))
            self._keeper.apply()
            log.info(
                "sub-step %d/%d: sparsity %.4f (%d of %d weights)",
                step + 1,
                substeps,
                self.sparsity(),
                self.num_pruned(),
                d,
            )

    def _snapshot(self) -> dict:
        return {
            "params": {name: p.detach().clone() for v in self.views for name, p in v.parameters().items()},
            "masks": {k: m.clone() for k, m in self.masks.items()},
            "state": copy.deepcopy(self._state()),
        }

    @torch.no_grad()
    def _restore(self, snap: dict) -> None:
        for view in self.views:
            for name, p in view.parameters().items():
                p.copy_(snap["params"][name])
        for k, m in self.masks.items():
            m.copy_(snap["masks"][k])
        self._load_state(snap["state"])

    # ------------------------------------------------------------------------------------------ life cycle
    def finalize(self) -> nn.Module:
        """Bake exact zeros into the weights, remove every hook and return the model."""
        self._keeper.apply()
        self._keeper.detach()
        self._finalized = True
        return self.model

    def state_dict(self) -> dict:
        """Masks and method state (λ, optimizer state, RNG…) — the model's own weights are not included."""
        return {
            "version": self.STATE_VERSION,
            "method": type(self).__name__,
            "masks": {k: m.clone() for k, m in self.masks.items()},
            "state": copy.deepcopy(self._state()),
        }

    def load_state_dict(self, state: Mapping) -> None:
        """Restore :meth:`state_dict` output and re-zero pruned weights. Mismatches raise ValueError."""
        self._check_alive()
        if not isinstance(state, Mapping) or "masks" not in state:
            raise ValueError("state_dict: not a pruner state (no 'masks')")
        if state.get("method") != type(self).__name__:
            raise ValueError(f"state_dict: saved by {state.get('method')}, loading into {type(self).__name__}")
        masks = state["masks"]
        if set(masks) != set(self.masks):
            raise ValueError(f"state_dict: layers {sorted(masks)} do not match this pruner's {sorted(self.masks)}")
        for k, m in masks.items():
            if m.shape != self.masks[k].shape or m.dtype != torch.bool:
                raise ValueError(
                    f"state_dict: mask of {k!r} has shape {tuple(m.shape)} / {m.dtype}, expected "
                    f"{tuple(self.masks[k].shape)} / torch.bool"
                )
        snapshot = self._snapshot()
        try:
            self._load_state(state.get("state", {}))
            for k, m in masks.items():
                self.masks[k].copy_(m.to(self.device))
        except BaseException:
            self._restore(snapshot)
            raise
        self._keeper.apply()
