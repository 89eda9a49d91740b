"""Backend registry and selector.

A backend maps op names to launchers with the reference's signature. Which one runs is decided per call, in
this order: an explicit ``backend=`` argument, the innermost :func:`use_backend` context, the ``FLS_BACKEND``
environment variable, else automatically — the highest-priority backend that supports the op on that device
and dtype. An explicitly requested backend that cannot run raises :class:`BackendUnavailableError` with the
reason and the fix; automatic selection falls back to the reference, which runs everywhere.
"""

from __future__ import annotations

import contextlib
import os
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import torch

from fls_kernels.backends import table

#: Every op of the contract, in documentation order (from :mod:`fls_kernels.backends.table`).
OPS = table.NAMES


class BackendUnavailableError(RuntimeError):
    """A requested backend cannot run this op here; the message says why and how to fix it."""


@dataclass
class Backend:
    """One implementation of the op contracts.

    Attributes:
        name: stable identifier (``reference``, ``cpu``, ``cuda``, ``triton``).
        priority: higher wins in automatic selection.
        devices: device types the kernels run on.
        dtypes: tensor dtypes the kernels accept.
        kernels: op name → launcher, filled lazily by ``loader`` on first use.
        loader: imports the implementation; returns the kernels or raises with the reason it is unavailable.
        fix: how to make the backend available, appended to its errors.
        auto_devices: device types where automatic selection may pick it (None: all of ``devices``); others
            need an explicit request (e.g. Triton's CPU interpreter).
    """

    name: str
    priority: int
    devices: tuple[str, ...]
    dtypes: tuple[torch.dtype, ...]
    loader: Callable[[], dict[str, Callable]]
    fix: str = ""
    auto_devices: tuple[str, ...] | None = None
    _kernels: dict[str, Callable] | None = field(default=None, repr=False)
    _error: str | None = field(default=None, repr=False)

    def load(self) -> str | None:
        """Import the implementation once; return why it is unavailable, or None."""
        if self._kernels is None and self._error is None:
            try:
                self._kernels = self.loader()
            except Exception as exc:  # noqa: BLE001 - the reason is recorded and raised on use
                self._error = f"{type(exc).__name__}: {exc}"
        return self._error

    @property
    def kernels(self) -> dict[str, Callable]:
        self.load()
        return self._kernels or {}

    def reason(self, op: str, device: torch.device | None = None, dtype: torch.dtype | None = None) -> str | None:
        """Why this backend cannot run ``op`` on ``device``/``dtype`` — None when it can."""
        error = self.load()
        if error is not None:
            return f"not available ({error})"
        if op not in self.kernels:
            return f"has no {op} kernel"
        if device is not None and device.type not in self.devices:
            return f"does not run on {device.type} (runs on {', '.join(self.devices)})"
        if dtype is not None and dtype not in self.dtypes:
            return f"does not support {dtype}"
        return None


_REGISTRY: dict[str, Backend] = {}
_local = threading.local()


def register_backend(backend: Backend) -> None:
    """Add (or replace) a backend in the registry."""
    _REGISTRY[backend.name] = backend


def backends() -> list[Backend]:
    """Registered backends, highest priority first."""
    return sorted(_REGISTRY.values(), key=lambda b: -b.priority)


def get_backend(name: str) -> Backend:
    """The backend called ``name``; ValueError listing the known names otherwise."""
    try:
        return _REGISTRY[name]
    except KeyError:
        raise ValueError(f"backend: unknown backend {name!r}; known: {', '.join(sorted(_REGISTRY))}") from None


def _stack() -> list[str]:
    if not hasattr(_local, "stack"):
        _local.stack = []
    return _local.stack


@contextlib.contextmanager
def use_backend(name: str) -> Iterator[None]:
    """Run every op inside the ``with`` block on backend ``name`` (unless a call passes ``backend=``).

    Example:
        >>> with fls_kernels.use_backend("reference"):
        ...     pruner.prune(0.5)
    """
    get_backend(name)
    _stack().append(name)
    try:
        yield
    finally:
        _stack().pop()


def requested_backend(explicit: str | None = None) -> str | None:
    """The backend asked for by argument, context or ``FLS_BACKEND`` (in that order), or None for automatic."""
    if explicit is not None:
        return explicit
    if _stack():
        return _stack()[-1]
    env = os.environ.get("FLS_BACKEND", "").strip()
    return env or None


def select(op: str, device: torch.device, dtype: torch.dtype, backend: str | None = None) -> str:
    """Name of the backend that runs ``op`` on ``device``/``dtype``.

    Raises:
        BackendUnavailableError: a requested backend cannot run it (the message lists why and the fix).
    """
    wanted = requested_backend(backend)
    if wanted is not None:
        chosen = get_backend(wanted)
        why = chosen.reason(op, device, dtype)
        if why is not None:
            fix = f" Fix: {chosen.fix}" if chosen.fix else ""
            raise BackendUnavailableError(f"backend {wanted!r} cannot run {op} on {device} {dtype}: {why}.{fix}")
        return wanted
    reasons = []
    for candidate in backends():
        why = candidate.reason(op, device, dtype)
        if why is None and candidate.auto_devices is not None and device.type not in candidate.auto_devices:
            why = f"is used on {device.type} only when requested explicitly"
        if why is None:
            return candidate.name
        reasons.append(f"{candidate.name}: {why}")
    raise BackendUnavailableError(f"no backend can run {op} on {device} {dtype}: " + "; ".join(reasons))


def kernel(name: str, op: str) -> Callable:
    """The launcher of ``op`` on backend ``name`` (already selected)."""
    return get_backend(name).kernels[op]


def preferred(name: str | None, op: str) -> str | None:
    """The backend to request for ``op`` when ``name`` is preferred for a whole computation: ``name`` when it
    implements ``op`` — or cannot load at all, so the call raises with the reason and the fix — else None
    (automatic selection, e.g. Triton has no ``select_smallest``)."""
    if name is None:
        return None
    backend = get_backend(name)
    if backend.load() is not None or op in backend.kernels:
        return name
    return None


def report() -> list[tuple[str, int, str]]:
    """(name, priority, status) for every backend: 'ok (ops…)' or the reason it is unavailable."""
    rows = []
    for b in backends():
        error = b.load()
        if error is not None:
            status = f"unavailable: {error}" + (f" — fix: {b.fix}" if b.fix else "")
        else:
            missing = [op for op in OPS if op not in b.kernels]
            status = f"ok on {', '.join(b.devices)}" + (f"; missing ops: {', '.join(missing)}" if missing else "")
        rows.append((b.name, b.priority, status))
    return rows


def _register_builtin() -> None:
    from fls_kernels.backends import cuda, reference, triton

    for module in (reference, cuda, triton):
        for backend in module.BACKENDS:
            register_backend(backend)


_register_builtin()

__all__ = [
    "OPS",
    "Backend",
    "BackendUnavailableError",
    "backends",
    "get_backend",
    "kernel",
    "preferred",
    "register_backend",
    "report",
    "requested_backend",
    "select",
    "use_backend",
]
