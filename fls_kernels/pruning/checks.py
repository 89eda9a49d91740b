"""Argument checks shared by the pruners and methods: each validates one value and its error names it."""

from __future__ import annotations

import math
import numbers


def sparsity(name: str, value: object) -> float:
    """A real number in [0, 1)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(value):
        raise TypeError(f"{name}: expected a real number in [0, 1), got {value!r}")
    if not 0 <= value < 1:
        raise ValueError(f"{name}: must be in [0, 1), got {value}")
    return float(value)


def integer(name: str, value: object, minimum: int = 0) -> int:
    """An int ≥ ``minimum``."""
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{name}: expected an int ≥ {minimum}, got {value!r}")
    return value


def positive(name: str, value: object) -> float:
    """A finite number > 0."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise TypeError(f"{name}: expected a finite number, got {value!r}")
    if value <= 0:
        raise ValueError(f"{name}: must be > 0, got {value}")
    return float(value)


def fraction(name: str, value: object) -> float:
    """A real number in (0, 1]."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(value):
        raise TypeError(f"{name}: expected a real number in (0, 1], got {value!r}")
    if not 0 < value <= 1:
        raise ValueError(f"{name}: must be in (0, 1], got {value}")
    return float(value)


def flag(name: str, value: object) -> bool:
    """A bool (not merely truthy: 1, "no" and None are refused)."""
    if not isinstance(value, bool):
        raise TypeError(f"{name}: expected a bool, got {type(value).__name__}")
    return value


def choice(name: str, value: object, allowed: tuple[str, ...]) -> str:
    """One of ``allowed``."""
    if value not in allowed:
        raise ValueError(f"{name}: expected one of {allowed}, got {value!r}")
    return value  # type: ignore[return-value]
