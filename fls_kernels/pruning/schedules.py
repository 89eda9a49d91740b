"""Sparsity schedules for gradual pruning: training step → target sparsity (piecewise constant between the
steps at which the pruner prunes)."""

from __future__ import annotations

import math
from collections.abc import Callable


def _unit(name: str, value: float) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value < 1:
        raise ValueError(f"{name}: expected a sparsity in [0, 1), got {value!r}")
    return float(value)


class Schedule:
    """Base: ``schedule(step)`` is the sparsity the model should have after training step ``step``."""

    def __call__(self, step: int) -> float:
        raise NotImplementedError


class _Ramp(Schedule):
    def __init__(self, initial: float, final: float, start: int, end: int, every: int = 1) -> None:
        self.initial, self.final = _unit("initial", initial), _unit("final", final)
        if self.final < self.initial:
            raise ValueError(f"schedule: final sparsity {final} is below the initial {initial} (it never decreases)")
        for name, value in (("start", start), ("end", end), ("every", every)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise ValueError(f"{name}: expected an int ≥ 0, got {value!r}")
        if end <= start:
            raise ValueError(f"end: must be after start ({start}), got {end}")
        if every < 1:
            raise ValueError(f"every: expected an int ≥ 1, got {every}")
        self.start, self.end, self.every = start, end, every

    def _shape(self, progress: float) -> float:
        raise NotImplementedError

    def __call__(self, step: int) -> float:
        if step < self.start:
            return 0.0
        if step >= self.end:
            return self.final
        last = self.start + (step - self.start) // self.every * self.every  # the last pruning step so far
        return self._shape((last - self.start) / (self.end - self.start))

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}({self.initial}, {self.final}, start={self.start}, end={self.end}, "
            f"every={self.every})"
        )


class CubicSchedule(_Ramp):
    """s_t = s_f + (s_i − s_f)(1 − (t − start)/(end − start))³, updated every ``every`` steps from ``start``
    (at which the model reaches s_i) until ``end`` (s_f); 0 before ``start``."""

    def _shape(self, progress: float) -> float:
        return self.final + (self.initial - self.final) * (1 - progress) ** 3


class LinearSchedule(_Ramp):
    """s_t = s_i + (s_f − s_i)(t − start)/(end − start), updated every ``every`` steps."""

    def _shape(self, progress: float) -> float:
        return self.initial + (self.final - self.initial) * progress


class ConstantSchedule(Schedule):
    """Prune once to ``sparsity`` at step ``at`` and hold it."""

    def __init__(self, sparsity: float, at: int = 0) -> None:
        self.sparsity = _unit("sparsity", sparsity)
        if isinstance(at, bool) or not isinstance(at, int) or at < 0:
            raise ValueError(f"at: expected an int ≥ 0, got {at!r}")
        self.at = at

    def __call__(self, step: int) -> float:
        return self.sparsity if step >= self.at else 0.0

    def __repr__(self) -> str:
        return f"ConstantSchedule({self.sparsity}, at={self.at})"


class CallableSchedule(Schedule):
    """Any function step → sparsity (checked at use: in [0, 1), never decreasing)."""

    def __init__(self, fn: Callable[[int], float]) -> None:
        self.fn = fn

    def __call__(self, step: int) -> float:
        value = self.fn(step)
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise ValueError(f"schedule: returned {value!r} at step {step}, expected a sparsity in [0, 1)")
        return float(value)


def as_schedule(schedule: object) -> Schedule | None:
    """None, a :class:`Schedule`, or a callable step → sparsity."""
    if schedule is None or isinstance(schedule, Schedule):
        return schedule
    if callable(schedule):
        return CallableSchedule(schedule)
    raise TypeError(f"schedule: expected a Schedule or a callable step → sparsity, got {type(schedule).__name__}")
