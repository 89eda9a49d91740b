"""Calibration data: model inputs of a batch, eval mode for curvature, and a resumable stream of batches.

Shared by the curvature floor (Fisher products and statistics read batches in eval mode) and the pruners
(which hold the stream and checkpoint its position).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Mapping

import torch
from torch import Tensor, nn


def split_batch(batch: object) -> tuple[tuple, dict]:
    """Model inputs of a loader batch: a tensor → (x,); a tuple/list → (batch[0],); a mapping → **batch."""
    if isinstance(batch, Tensor):
        return (batch,), {}
    if isinstance(batch, Mapping):
        return (), dict(batch)
    if isinstance(batch, (tuple, list)) and batch:
        return (batch[0],), {}
    raise TypeError(f"loader: cannot take model inputs from a batch of type {type(batch).__name__}")


#: Fields read from a model output that is a mapping or an object (transformers' ``ModelOutput``), in order.
OUTPUT_FIELDS = ("logits", "last_hidden_state")


def model_output(out: object) -> Tensor:
    """The tensor a likelihood reads from a model's output: a tensor itself; a tuple/list's first element; a
    mapping's or object's (dataclass, ``ModelOutput``) ``logits``, else ``last_hidden_state``.

    Raises:
        TypeError: naming ``output=`` when none of these gives a tensor.
    """
    if isinstance(out, Tensor):
        return out
    found = None
    if isinstance(out, (tuple, list)) and out:
        found = out[0]
    else:
        for key in OUTPUT_FIELDS:
            found = out.get(key) if isinstance(out, Mapping) else getattr(out, key, None)
            if found is not None:
                break
    if isinstance(found, Tensor):
        return found
    raise TypeError(
        f"output: cannot read a tensor from a model output of type {type(out).__name__} (tensor, tuple/list, "
        f"or a mapping/object with one of {list(OUTPUT_FIELDS)}); pass output=, a function output → tensor"
    )


def check_finite(batch: object, index: int, argname: str = "loader") -> None:
    """ValueError "batch N contains NaN/Inf in <key>" for the first floating tensor of ``batch`` (a tensor, or
    the elements of a tuple/list/mapping) holding a non-finite value."""
    if isinstance(batch, Tensor):
        items = [("the batch", batch)]
    elif isinstance(batch, Mapping):
        items = [(repr(k), v) for k, v in batch.items()]
    elif isinstance(batch, (tuple, list)):
        items = [(f"element {k}", v) for k, v in enumerate(batch)]
    else:
        items = []
    for key, t in items:
        if isinstance(t, Tensor) and t.is_floating_point() and not bool(torch.isfinite(t).all()):
            raise ValueError(f"{argname}: batch {index} contains NaN/Inf in {key}")


@contextlib.contextmanager
def eval_mode(model: nn.Module) -> Iterator[None]:
    """Put every submodule in eval mode, restoring each one's flag on exit."""
    flags = [(m, m.training) for m in model.modules()]
    model.eval()
    try:
        yield
    finally:
        for m, flag in flags:
            m.training = flag


def loader_length(loader: object) -> int | None:
    """``len(loader)``, or None for a loader without one (a generator, an iterable dataset)."""
    try:
        return len(loader)
    except TypeError:
        return None


class BatchStream:
    """An endless stream cycling over ``loader``; ``position`` counts the batches handed out (so checkpoints
    can resume where they stopped).

    Args:
        loader: a re-iterable of batches (list, DataLoader, ...).
        check: called on the first batch (e.g. to validate its device); raises on bad input.
        argname: the argument name used in errors.
    """

    def __init__(self, loader: object, check: Callable[[object], None], argname: str = "loader") -> None:
        if loader is None or isinstance(loader, (str, bytes)) or not hasattr(loader, "__iter__"):
            raise TypeError(f"{argname}: expected an iterable of batches, got {type(loader).__name__}")
        self.loader = loader
        self.argname = argname
        self.position = 0
        self._it: Iterator[object] = iter(loader)
        try:
            self._pending: list[object] = [next(self._it)]
        except StopIteration:
            raise ValueError(f"{argname}: yielded no batches") from None
        self.first = self._pending[0]  # the loader's first batch, kept for probes
        check(self.first)

    def __iter__(self) -> BatchStream:
        return self

    def __next__(self) -> object:
        self.position += 1
        if self._pending:
            return self._pending.pop()
        try:
            return next(self._it)
        except StopIteration:
            self._it = iter(self.loader)
            try:
                return next(self._it)
            except StopIteration:
                raise ValueError(f"{self.argname}: yielded no batches on a later pass; pass a re-iterable") from None

    @property
    def last_index(self) -> int:
        """The loader index of the batch handed out last (its position within a pass, from 0)."""
        try:
            return (self.position - 1) % len(self.loader)
        except TypeError:
            return self.position - 1

    def skip(self, count: int) -> None:
        """Advance by ``count`` batches (to resume at a saved position)."""
        for _ in range(count):
            next(self)
