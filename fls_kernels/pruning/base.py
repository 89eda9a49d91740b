"""The pruner life cycle shared by FishLeg and every baseline.

    pruner = SomePruner(model, pattern=..., schedule=...)   # layers by type / regex / ignore; masks all True
    pruner.fit(loader, steps)          # data (and curvature, where the method learns one)
    pruner.prune(0.9, substeps=16)     # one-shot: scores → selection → update, exact sparsity, all-or-nothing
    # or gradual: pruner.step() after every optimizer.step(), pruning on the schedule
    pruner.finalize()                  # bake zeros, remove hooks

A prune step either completes or leaves the model (and the pruner) exactly as it was.
"""

from __future__ import annotations

import copy
import logging
import math
import re
from collections.abc import Mapping, Sequence

import torch
from torch import Tensor, nn

from fls_kernels import ops, timing
from fls_kernels.curvature.fisher import split_batch
from fls_kernels.curvature.layers import SUPPORTED_LAYERS, LayerView, find_layers
from fls_kernels.pruning import checks, selection
from fls_kernels.pruning.data import BatchStream
from fls_kernels.pruning.masks import MaskKeeper
from fls_kernels.pruning.patterns import NMPattern, parse_pattern
from fls_kernels.pruning.schedules import Schedule, as_schedule

log = logging.getLogger("fls_kernels.prune")

#: data-parallel wrappers whose ``.module`` is pruned
_WRAPPERS = ("DistributedDataParallel", "FullyShardedDataParallel")


class BasePruner:
    """Layer selection, masks, patterns, schedules, the prune step and checkpoints; subclasses define scores
    and updates.

    Args:
        model: the network to prune in place.
        pattern: "unstructured" (default), "N:M" (e.g. "2:4", along the inputs) or "blockRxC" (e.g. "block4x4").
        schedule: for gradual pruning with :meth:`step`: a :class:`~fls_kernels.pruning.schedules.Schedule`
            (e.g. ``CubicSchedule(0.5, 0.95, start=0, end=3000, every=100)``) or any callable step → sparsity.
        substeps: sub-steps of each scheduled pruning step.
        layer_types: module types to prune (subset of Linear, Conv2d).
        include: regex the qualified layer name must fully match (None: every layer of those types).
        ignore: regexes of layer names to leave dense.
        allocation: "global" (one ranking over all layers, default) or "uniform" (each layer to the same
            sparsity); a per-layer dict can also be passed to :meth:`prune`.
        include_bias: fold biases into the layer matrices (they are never pruned, but may be updated).
        backend: preferred ops backend (default: automatic); ops it does not implement (e.g. Triton has no
            ``select_smallest``) run on the automatic choice.
        progress: show tqdm progress bars.
        distributed: prune on every rank of a ``torch.distributed`` group, each reading its own batches:
            True / "replicated" (data-parallel), "sharded" (per-layer owners; FLS and K-FAC-OBS) or a
            :class:`~fls_kernels.distributed.Distributed`. Every rank ends each step with the same masks and
            weights; a step failing on any rank raises on every rank with no model changed.
    """

    #: bump when the state_dict layout changes
    STATE_VERSION = 2
    #: whether the method supports ``distributed="sharded"`` (per-layer owners)
    SHARDABLE = False

    def __init__(
        self,
        model: nn.Module,
        *,
        pattern: str = "unstructured",
        schedule: Schedule | object = None,
        substeps: int = 1,
        layer_types: Sequence[type[nn.Module]] = SUPPORTED_LAYERS,
        include: str | None = None,
        ignore: Sequence[str] = (),
        allocation: str = "global",
        include_bias: bool = True,
        backend: str | None = None,
        progress: bool = False,
        distributed: object = None,
    ) -> None:
        if not isinstance(model, nn.Module):
            raise TypeError(f"model: expected an nn.Module, got {type(model).__name__}")
        if type(model).__name__ in _WRAPPERS and isinstance(getattr(model, "module", None), nn.Module):
            model = model.module  # DDP / FSDP: prune the wrapped module in place (FSDP: inside summon_full_params)
        if allocation not in selection.ALLOCATIONS:
            raise ValueError(f"allocation: expected one of {selection.ALLOCATIONS}, got {allocation!r}")
        if isinstance(ignore, str):
            ignore = (ignore,)
        for pattern_re in ([include] if include is not None else []) + list(ignore):
            try:
                re.compile(pattern_re)
            except (re.error, TypeError) as exc:
                raise ValueError(f"include/ignore: invalid regex {pattern_re!r}: {exc}") from None
        self.pattern = parse_pattern(pattern)
        self.schedule = as_schedule(schedule)
        self.substeps = checks.count("substeps", substeps, 1)
        self.model = model
        self.allocation = allocation
        if backend is not None:
            from fls_kernels.backends import get_backend

            get_backend(backend)  # ValueError naming `backend` when unknown
        self.backend = backend
        self.progress = progress
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
        self.pattern.check(self.views)
        self.device = devices.pop()
        self._setup_distributed(distributed)
        #: layer name → bool mask shaped like its weight (True = alive)
        self.masks: dict[str, Tensor] = {v.name: torch.ones_like(v.weight, dtype=torch.bool) for v in self.views}
        self._keeper = MaskKeeper(model, {v.weight: self.masks[v.name] for v in self.views})
        self._keeper.attach()
        self._finalized = False
        self._step = 0  # training steps seen by step()
        self._stream: BatchStream | None = None
        self._resume_position = 0

    def _setup_distributed(self, distributed: object) -> None:
        from fls_kernels.distributed import assign_owners, resolve

        resolved = resolve(distributed, self.device)
        self.comm, self.dist_mode = resolved if resolved is not None else (None, None)
        self.owners: list[int] | None = None
        if self.comm is None:
            return
        if self.dist_mode == "sharded":
            if not self.SHARDABLE:
                raise ValueError(
                    f"distributed: {type(self).__name__} supports 'replicated' only; 'sharded' applies to the "
                    "Kronecker-factored pruners (FishLegPruner, KFACPruner)"
                )
            self.owners = assign_owners([v.m * v.m * v.n + v.m * v.n * v.n for v in self.views], self.comm.world)
        shapes = [float(x) for v in self.views for x in (v.m, v.n)]
        self.comm.same("model", [float(len(self.views)), *shapes])
        checksum = sum(float(p.detach().double().sum()) for v in self.views for p in v.parameters().values())
        self.comm.same("model weights (start every rank from the same model, e.g. after DDP's broadcast)", [checksum])

    def owns(self, index: int) -> bool:
        """Whether this rank computes layer ``index`` (always, unless sharded)."""
        return self.owners is None or self.owners[index] == self.comm.rank

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
        return {name: int((~m).sum()) / m.numel() for name, m in self.masks.items()}

    def report(self) -> str:
        """A per-layer table: shape, weights, pruned, sparsity, and the total."""
        lines = [f"{'layer':<32} {'matrix':>14} {'weights':>10} {'pruned':>10} {'sparsity':>9}"]
        for v in self.views:
            pruned = int((~self.masks[v.name]).sum())
            total = v.m * v.n_weight
            lines.append(f"{v.name:<32} {f'{v.m}x{v.n}':>14} {total:>10} {pruned:>10} {pruned / total:>9.4f}")
        lines.append(
            f"{'total':<32} {'':>14} {self.num_prunable():>10} {self.num_pruned():>10} {self.sparsity():>9.4f}"
        )
        return "\n".join(lines)

    def memory_usage(self) -> dict[str, int]:
        """Bytes held by the pruner beside the model: masks plus what the method keeps (λ, optimizer state…)."""
        usage = {"masks": sum(m.numel() * m.element_size() for m in self.masks.values())}
        usage.update(self._memory())
        usage["total"] = sum(usage.values())
        return usage

    # ------------------------------------------------------------------------------------------ subclass API
    def _scores(self, index: int, W: Tensor, alive: Tensor) -> Tensor:
        """Saliency of each weight of layer ``index``: [m, n_weight], +inf where pruned. W, alive: [m, n]."""
        raise NotImplementedError

    def _unit_scores(self, index: int, W: Tensor, alive: Tensor, scores: Tensor) -> Tensor:
        """Scores of the pattern's units (blocks): by default the sum of the weights' scores."""
        return self.pattern.reduce(scores)

    def _selected(self, chosen: list[Tensor]) -> None:
        """Called with every layer's newly chosen weights ([m, n_weight] bool) before the updates."""

    def _update(self, index: int, W: Tensor, prune: Tensor, keep: Tensor) -> None:
        """Apply the removal to W ([m, n], in place): default zeroes the removed weights only."""
        W.masked_fill_(~keep, 0)

    def _fit(self, steps: int) -> list[float]:
        """Learn what the method needs from ``self._stream`` (curvature, statistics…)."""
        return []

    def _is_fitted(self) -> bool:
        """Whether :meth:`fit` has given the method what :meth:`prune` needs."""
        return True

    def _before_substep(self, substep: int) -> None:
        """Called before each sub-step's scoring (e.g. to refine curvature on the current masks)."""

    def _between_prunes(self) -> None:
        """Called by :meth:`step` on training steps that do not prune (e.g. to keep refining curvature)."""

    def _state(self) -> dict:
        """Extra state of the method, for :meth:`state_dict` and the all-or-nothing snapshot."""
        return {}

    def _load_state(self, state: dict) -> None:
        """Restore what :meth:`_state` returned."""

    def _memory(self) -> dict[str, int]:
        return {}

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

    def _check_batch(self, batch: object) -> None:
        args, kwargs = split_batch(batch)
        for t in list(args) + list(kwargs.values()):
            if isinstance(t, Tensor) and t.device != self.device:
                raise ValueError(f"loader: batch is on {t.device} but the model is on {self.device}")

    def _backend(self, op: str) -> str | None:
        """The pruner's backend for ``op`` when it implements it, else None (automatic selection)."""
        if self.backend is None:
            return None
        from fls_kernels.backends import get_backend

        backend = get_backend(self.backend)
        if backend.load() is not None:  # unavailable: keep it, so the op raises with the reason and the fix
            return self.backend
        return self.backend if op in backend.kernels else None

    def _pruned_units(self, view: LayerView) -> int:
        return int((~self.masks[view.name]).sum()) // self.pattern.size

    # ------------------------------------------------------------------------------------------ data
    def fit(self, loader: object, steps: int = 0) -> list[float]:
        """Attach the calibration ``loader`` and learn what the method needs (``steps`` of it, if iterative).

        After :meth:`load_state_dict`, calling ``fit(loader, 0)`` re-attaches the data at the saved position.

        Args:
            loader: re-iterable batches (tensors, (x, y, ...) tuples or mappings of model inputs).
            steps: iterations of the method's fit (aux steps for FLS); methods without one ignore it.

        Returns:
            the per-step losses of this call (empty for methods without an iterative fit).
        """
        self._check_alive()
        steps = checks.count("steps", steps)
        stream = BatchStream(loader, self._check_batch)
        stream.skip(self._resume_position)
        self._stream, self._resume_position = stream, 0
        return self._fit(steps)

    def _require_data(self, what: str) -> BatchStream:
        if self._stream is None:
            raise RuntimeError(f"{type(self).__name__}.{what}: call fit(loader) first")
        return self._stream

    # ------------------------------------------------------------------------------------------ the step
    def _targets(self, sparsity: object) -> tuple[str, object]:
        """Validate ``sparsity``; return ("global", units), ("layers", {name: units}) or ("nm", zeros per group)."""
        if isinstance(self.pattern, NMPattern):
            if sparsity is None:
                sparsity = self.pattern.n / self.pattern.m
            if isinstance(sparsity, Mapping):
                raise ValueError("sparsity: an N:M pattern prunes every layer alike; pass one number")
            s = checks.sparsity("sparsity", sparsity)
            zeros = round(s * self.pattern.m)
            if abs(s * self.pattern.m - zeros) > 1e-9 or zeros > self.pattern.n:
                raise ValueError(
                    f"sparsity: with pattern {self.pattern} use j/{self.pattern.m} for j ≤ {self.pattern.n}, got {s}"
                )
            if zeros < self.num_pruned() // self._groups():
                raise ValueError(f"sparsity: {s} is below the current sparsity {self.sparsity():.6f}")
            return "nm", zeros
        if sparsity is None:
            raise ValueError("sparsity: required (a number in [0, 1) or a dict of layer → sparsity)")
        current = self.layer_sparsity()
        if isinstance(sparsity, Mapping):
            unknown = set(sparsity) - set(current)
            if unknown:
                raise ValueError(f"sparsity: unknown layers {sorted(unknown)}; prunable: {sorted(current)}")
            for name, value in sparsity.items():
                checks.sparsity(f"sparsity[{name!r}]", value)
        else:
            checks.sparsity("sparsity", sparsity)
        per_layer = selection.per_layer_targets(sparsity, self.layer_names, current, self.allocation)
        if per_layer is None:
            total = sum(self.pattern.units(v) for v in self.views)
            k = selection.count(float(sparsity), total)
            if k < sum(self._pruned_units(v) for v in self.views):
                raise ValueError(f"sparsity: {sparsity} is below the current sparsity {self.sparsity():.6f}")
            return "global", k
        counts = {}
        for view in self.views:
            k = selection.count(per_layer[view.name], self.pattern.units(view))
            if k < self._pruned_units(view):
                raise ValueError(
                    f"sparsity: {per_layer[view.name]} for layer {view.name!r} is below its current sparsity "
                    f"{current[view.name]:.6f}"
                )
            counts[view.name] = k
        return "layers", counts

    def prune(self, sparsity: float | Mapping[str, float] | None = None, substeps: int = 1) -> float:
        """Prune to ``sparsity`` in ``substeps`` rounds along a cubic path from the current sparsity.

        Unstructured, global: exactly ⌈s·d⌉ of the d prunable weights are zero afterwards (per layer for uniform
        allocation or a dict; in whole blocks for block patterns). N:M: ``sparsity`` is j/M (default N/M) and
        every group of M inputs then holds exactly j zeros. Pruned weights are +0 and never come back.

        Args:
            sparsity: target in [0, 1), or layer name → target (layers left out keep their sparsity).
            substeps: K ≥ 1 scoring/selection/update rounds.

        Returns:
            the overall sparsity reached.

        Raises:
            ValueError / TypeError: bad ``sparsity``/``substeps`` or NaN/Inf weights; the model is untouched.
        """
        self._check_alive()
        if not self._is_fitted():
            raise RuntimeError(f"{type(self).__name__}.prune: call fit(loader) first")
        substeps = checks.count("substeps", substeps, 1)
        kind, target = self._targets(sparsity)
        self._check_weights()
        snapshot = self._snapshot()
        try:
            self._run_substeps(kind, target, substeps)
        except BaseException:
            self._restore(snapshot)
            raise
        return self.sparsity()

    def step(self) -> float | None:
        """Advance the schedule by one training step (call it after ``optimizer.step()``).

        Prunes when the schedule's sparsity rises past the current one; otherwise lets the method keep
        refining its curvature. Returns the sparsity reached when it pruned, else None.
        """
        self._check_alive()
        if self.schedule is None:
            raise RuntimeError(f"{type(self).__name__}.step: no schedule was given to the constructor")
        step = self._step
        target = self.schedule(step)
        if isinstance(self.pattern, NMPattern):  # whole zeros per group, up to N
            target = min(math.floor(target * self.pattern.m + 1e-9), self.pattern.n) / self.pattern.m
        try:
            kind, goal = self._targets(target)
        except ValueError as exc:
            raise ValueError(f"schedule: at step {step}, {exc}") from None
        grows = {
            "global": lambda: goal > sum(self._pruned_units(v) for v in self.views),
            "nm": lambda: goal * self._groups() > self.num_pruned(),
            "layers": lambda: any(goal[v.name] > self._pruned_units(v) for v in self.views),
        }[kind]()
        if grows:
            reached = self.prune(target, self.substeps)
            log.info("step %d: pruned to %.4f", step, reached)
        else:
            reached = None
            self._between_prunes()
        self._step += 1
        self._show_progress()
        return reached

    def _show_progress(self) -> None:
        if not self.progress:
            return
        if getattr(self, "_bar", None) is None:
            from tqdm.auto import tqdm

            self._bar = tqdm(total=getattr(self.schedule, "end", None), initial=self._step - 1, desc="gradual")
        self._bar.update(1)
        self._bar.set_postfix(sparsity=f"{self.sparsity():.4f}")

    def _groups(self) -> int:
        return sum(v.m * v.n_weight // self.pattern.m for v in self.views)

    def _run_substeps(self, kind: str, target: object, substeps: int) -> None:
        start_units = {v.name: self._pruned_units(v) for v in self.views}
        start_nm = self.num_pruned() // self._groups() if kind == "nm" else 0
        for step in range(substeps):
            frac = 1 - (1 - (step + 1) / substeps) ** 3  # cubic path, 1 at the last sub-step

            def along(start: int, goal: int, frac: float = frac) -> int:
                return start + math.ceil(round((goal - start) * frac, 9))

            if kind == "global":
                goal = along(sum(start_units.values()), target)
                new: object = goal - sum(self._pruned_units(v) for v in self.views)
                empty = new == 0
            elif kind == "layers":
                new = [along(start_units[v.name], target[v.name]) - self._pruned_units(v) for v in self.views]
                empty = sum(new) == 0
            else:
                zeros = along(start_nm, target)
                new = zeros
                empty = zeros * self._groups() == self.num_pruned()
            if empty:
                continue
            self._before_substep(step)
            if self.owners is not None:
                from fls_kernels.pruning.sharded import prune_once

                prune_once(self, kind, new)
            elif self.comm is not None:  # replicated: the same step everywhere, agreed before going on
                with self.comm.attempt():
                    self._prune_once(kind, new)
                self.comm.check()
            else:
                self._prune_once(kind, new)
            log.info("sub-step %d/%d: sparsity %.4f", step + 1, substeps, self.sparsity())

    def _prune_once(self, kind: str, new: object) -> None:
        dtype = self._work_dtype()
        mats = [v.matrix(dtype) for v in self.views]
        alive = [self.full_mask(i) for i in range(len(self.views))]
        with timing.section("scoring"):
            scores = [self._scores(i, W, alive[i]) for i, W in enumerate(mats)]
            if kind != "nm":
                scores = [self._unit_scores(i, mats[i], alive[i], s) for i, s in enumerate(scores)]
        with timing.section("selection"):
            chosen = self._choose(kind, new, scores, alive)
        self._selected(chosen)
        with timing.section("update"):
            self._apply(mats, alive, chosen)

    def _choose(
        self, kind: str, new: object, scores: list[Tensor], alive: list[Tensor], only: list[int] | None = None
    ) -> list[Tensor | None]:
        """Per layer, the weights ([m, n_weight] bool) removed now; ``scores`` are per pattern unit.

        ``only``: choose within these layers alone (per-layer kinds; None elsewhere).
        """
        if kind == "global":
            picked = selection.select(scores, new, backend=self._backend("select_smallest"))
            return [self.pattern.expand(c) for c in picked]
        layers = range(len(self.views)) if only is None else only
        chosen: list[Tensor | None] = [None] * len(self.views)
        for i in layers:
            view, s = self.views[i], scores[i]
            if kind == "layers":
                picked = selection.select([s], [new[i]], backend=self._backend("select_smallest"))[0]
                chosen[i] = self.pattern.expand(picked)
                continue
            s = s.masked_fill(~alive[i][:, : view.n_weight], float("-inf"))  # already pruned count first
            picked = ops.select_nm(s, new, self.pattern.m, backend=self._backend("select_nm"))
            chosen[i] = picked & alive[i][:, : view.n_weight]
        return chosen

    def _apply(self, mats: list[Tensor], alive: list[Tensor], chosen: list[Tensor]) -> None:
        """Update every layer (``_update``), write it back and record the new masks."""
        for i in range(len(self.views)):
            self._commit(i, mats[i], self._apply_one(i, mats[i], alive[i], chosen[i]))
        self._keeper.apply()

    def _apply_one(self, index: int, W: Tensor, alive: Tensor, chosen: Tensor) -> Tensor:
        """Update layer ``index``'s matrix W in place; returns its new alive mask [m, n]."""
        view = self.views[index]
        prune = chosen
        if view.has_bias:
            prune = torch.cat([prune, prune.new_zeros(view.m, 1)], dim=1)
        keep = alive & ~prune
        self._update(index, W, prune, keep)
        return keep

    def _commit(self, index: int, W: Tensor, keep: Tensor) -> None:
        view = self.views[index]
        view.write(W)
        self.masks[view.name].copy_(keep[:, : view.n_weight].reshape(view.weight.shape))

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
        if getattr(self, "_bar", None) is not None:
            self._bar.close()
        self._finalized = True
        return self.model

    def state_dict(self) -> dict:
        """Masks, schedule position, data position and method state (λ, optimizer state, RNG…) — the model's
        own weights are not included (save ``model.state_dict()`` beside it)."""
        return {
            "version": self.STATE_VERSION,
            "method": type(self).__name__,
            "pattern": str(self.pattern),
            "masks": {k: m.clone() for k, m in self.masks.items()},
            "step": self._step,
            "data_position": self._stream.position if self._stream is not None else self._resume_position,
            "shard": self._shard(),
            "state": copy.deepcopy(self._state()),
        }

    def _shard(self) -> dict | None:
        """Which layers' method state this rank's state_dict holds (None: all of them)."""
        return None if self.owners is None else {"owners": list(self.owners), "rank": self.comm.rank}

    def load_state_dict(self, state: Mapping) -> None:
        """Restore :meth:`state_dict` output and re-zero pruned weights. Mismatches raise ValueError (a state
        saved before any pruning loads into a pruner of any pattern: a fitted Q serves them all).

        Attached data restarts at the saved batch position (skipping batches); a fresh pruner re-attaches its
        data with ``fit(loader, 0)``, which resumes there too.
        """
        self._check_alive()
        if not isinstance(state, Mapping) or "masks" not in state:
            raise ValueError("state_dict: not a pruner state (no 'masks')")
        if state.get("method") != type(self).__name__:
            raise ValueError(f"state_dict: saved by {state.get('method')}, loading into {type(self).__name__}")
        masks = state["masks"]
        pruned = any(not bool(m.all()) for m in masks.values())
        if pruned and state.get("pattern", str(self.pattern)) != str(self.pattern):
            raise ValueError(f"state_dict: saved with pattern {state['pattern']}, this pruner uses {self.pattern}")
        if set(masks) != set(self.masks):
            raise ValueError(f"state_dict: layers {sorted(masks)} do not match this pruner's {sorted(self.masks)}")
        for k, m in masks.items():
            if m.shape != self.masks[k].shape or m.dtype != torch.bool:
                raise ValueError(
                    f"state_dict: mask of {k!r} has shape {tuple(m.shape)} / {m.dtype}, expected "
                    f"{tuple(self.masks[k].shape)} / torch.bool"
                )
        if state.get("shard") != self._shard():
            raise ValueError(
                f"state_dict: saved for layer owners {state.get('shard')}, this pruner has {self._shard()} "
                "(a sharded state loads only into the same rank of the same sharding)"
            )
        snapshot = self._snapshot()
        try:
            self._load_state(state.get("state", {}))
            for k, m in masks.items():
                self.masks[k].copy_(m.to(self.device))
        except BaseException:
            self._restore(snapshot)
            raise
        self._step = int(state.get("step", 0))
        self._resume_position = int(state.get("data_position", 0))
        if self._stream is not None:  # data attached: restart it at the saved position
            self._stream = BatchStream(self._stream.loader, self._check_batch)
            self._stream.skip(self._resume_position)
            self._resume_position = 0
        self._keeper.apply()
