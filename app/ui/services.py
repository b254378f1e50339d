"""The process-wide services every tab's handlers share: the app's parts (app.wiring) and the running generations.

The loaded language model is one object per process (it can take gigabytes); handlers reach it through
`current()`, never through `gr.State`, which holds only small deep-copyable values (ids, versions, texts).
Tests install their own `Services` with `install(...)` and call the handlers as plain functions.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field

from app.config import Config
from app.engine import Engine
from app.offline import ModelSource
from app.wiring import Parts


class NotReadyError(RuntimeError):
    """The app's services were used before `install()`; a programming error, not a user's."""


@dataclass
class Services:
    """What the handlers need, created once per process by `app.ui.build_app` (or by a test) from
    `app.wiring.open_parts`."""

    parts: Parts
    # Built on first use (it needs the embedder); it loads a model only when a step asks for one.
    _engine: Engine | None = None
    _lock: threading.RLock = field(default_factory=threading.RLock)
    _cancels: dict[str, threading.Event] = field(default_factory=dict)

    @property
    def config(self) -> Config:
        return self.parts.config

    @property
    def source(self) -> ModelSource:
        """What `--model` resolved to."""
        return self.parts.models.source

    @property
    def session_factory(self):
        return self.parts.session_factory

    def session(self):
        """A new session; use as `with services.session() as s, s.begin():` (one transaction per user action)."""
        return self.session_factory()

    def embedder(self):
        return self.parts.embedder()

    def use_embedder(self, embedder) -> None:
        """Serve retrieval with an embedder loaded elsewhere (tests share one per session)."""
        self.parts.models.use_embedder(embedder)

    def use_generator(self, generator) -> None:
        """Serve the app's own model (`--model`) with a generator loaded elsewhere (tests, or a caller that
        already holds one): it becomes the process-wide model."""
        self.parts.models.use_generator(generator)

    def loaded_generator(self):
        """The model if one is loaded already, else None (counting tokens must not trigger a load)."""
        return self.parts.models.loaded_generator()

    def engine(self) -> Engine:
        """The writing engine: each step resolves the novel's own model (loading it on first use); undo, redo,
        edits and the reader's view load none, so they stay instant on a fresh start."""
        with self._lock:
            if self._engine is None:
                self._engine = self.parts.engine()
            return self._engine

    def cancel_event(self, key: str) -> threading.Event:
        """A fresh cancel flag for the generation `key` (a novel); Stop sets it, the engine checks between tokens."""
        with self._lock:
            event = threading.Event()
            self._cancels[key] = event
            return event

    def cancel(self, key: str) -> bool:
        """Ask the generation running under `key` to stop; False when none is running."""
        with self._lock:
            event = self._cancels.get(key)
            if event is None or event.is_set():
                return False
            event.set()
            return True

    def finished(self, key: str, event: threading.Event) -> None:
        with self._lock:
            if self._cancels.get(key) is event:
                del self._cancels[key]


_current: Services | None = None


def install(services: Services) -> Services:
    """Make `services` the process-wide instance the handlers use."""
    global _current
    _current = services
    return services


def current() -> Services:
    if _current is None:
        raise NotReadyError("app.ui.services.install() was not called before a handler ran")
    return _current
