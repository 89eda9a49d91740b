"""Calibration data: model inputs of a batch, eval mode for curvature, and a resumable stream of batches.

Shared by the curvature floor (Fisher products and statistics read batches in eval mode) and the pruners
(which hold the stream and checkpoint its position).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Mapping

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
        check(self._pending[0])

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

    def skip(self, count: int) -> None:
        """Advance by ``count`` batches (to resume at a saved position)."""
        for _ in range(count):
            next(self)
