"""The errors a store operation raises: each `str()` is one line the user can act on.

Their own module because every writer of memory/ raises them (store, revisions, embeddings, exchange)."""

from __future__ import annotations


class StoreError(RuntimeError):
    """A store operation that cannot be done; `str()` is one line saying why."""


class NotFoundError(StoreError):
    pass


class ValidationError(StoreError):
    pass


class ConflictError(StoreError):
    """A write made from a stale view: nothing was written. `current_version` is what the store holds now."""

    def __init__(self, message: str, current_version: int | None = None):
        super().__init__(message)
        self.current_version = current_version
