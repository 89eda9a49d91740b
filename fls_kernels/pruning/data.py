"""An endless, position-counting stream of batches over a re-iterable loader (so checkpoints can resume)."""

from __future__ import annotations

from collections.abc import Callable, Iterator


class BatchStream:
    """Cycles over ``loader``; ``position`` counts the batches handed out.

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
