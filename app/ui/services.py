"""The process-wide services every tab's handlers share: the store's sessions, the one loaded model, the engine.

The loaded language model is one object per process (it can take gigabytes); handlers reach it through
`current()`, never through `gr.State`, which holds only small deep-copyable values (ids, versions, texts).
Tests install their own `Services` with `install(...)` and call the handlers as plain functions.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from app.config import Config, check_model_allowed
from app.offline import ModelSource, default_embedder_path, resolve_model


class NotReadyError(RuntimeError):
    """The app's services were used before `install()`; a programming error, not a user's."""


@dataclass
class Services:
    """What the handlers need, created once per process by `app.ui.build_app` (or by a test)."""

    config: Config
    source: ModelSource
    session_factory: Any  # sqlalchemy.orm.sessionmaker
    # Loaded lazily under the lock: the first generation pays for loading, opening the page does not.
    _generator: Any = None
    _generator_key: tuple | None = None
    _embedder: Any = None
    _engine: Any = None
    _lock: threading.RLock = field(default_factory=threading.RLock)
    _cancels: dict[str, threading.Event] = field(default_factory=dict)

    def session(self):
        """A new session; use as `with services.session() as s, s.begin():` (one transaction per user action)."""
        return self.session_factory()

    def embedder(self):
        with self._lock:
            if self._embedder is None:
                from memory.retrieval import Embedder

                path = default_embedder_path() if self.config.embedder == "default" else Path(self.config.embedder)
                self._embedder = Embedder(str(path))
            return self._embedder

    def generator(self, model: str | None = None, device: str | None = None, dtype: str | None = None):
        """The process-wide TextGenerator for `model` (a `--model` string; None = the one the app started with).

        Asking for another model than the loaded one unloads the old one first: one model in memory at a time.
        """
        device = device or self.config.device
        dtype = dtype or self.config.dtype
        with self._lock:
            # A novel's settings may come from an older database or an import: refuse a server not allowed now.
            check_model_allowed(model or self.config.model, self.config)
            source = self.source if model in (None, "", self.config.model) else resolve_model(
                model, self.config.models_dir, self.config.allow_download)
            key = (source.kind, source.location, device, dtype)
            if self._generator is None or self._generator_key != key:
                from models.service import load_generator

                self._generator = None
                self._engine = None
                self._generator = load_generator(
                    source, device=device, dtype=dtype, cache_dir=self.config.models_dir,
                    trust_remote_code=self.config.trust_remote_code)
                self._generator_key = key
            return self._generator

    def use_generator(self, generator) -> None:
        """Serve the app's own model (`--model`) with a generator loaded elsewhere (tests, or a caller that
        already holds one): it becomes the process-wide model."""
        with self._lock:
            self._generator = generator
            self._generator_key = (self.source.kind, self.source.location, self.config.device, self.config.dtype)
            self._engine = None

    def use_embedder(self, embedder) -> None:
        """Serve retrieval with an embedder loaded elsewhere (tests share one per session)."""
        with self._lock:
            self._embedder = embedder

    def loaded_generator(self):
        """The model if one is loaded already, else None (counting tokens must not trigger a load)."""
        return self._generator

    def _snapshot_store(self):
        from memory.snapshots import FileSnapshotStore

        return FileSnapshotStore(self.session_factory, self.config.data_dir / "snapshots")

    def engine(self, model: str | None = None, device: str | None = None, dtype: str | None = None):
        """The writing engine over the process-wide model (rebuilt only when the model changes)."""
        with self._lock:
            generator = self.generator(model, device, dtype)
            if self._engine is None or self._engine.generator is not generator:
                from app.engine import Engine

                self._engine = Engine(self.session_factory, generator, self.embedder(),
                                      snapshot_store=self._snapshot_store())
            return self._engine

    def history_engine(self):
        """An engine for what needs no model (undo, redo, paragraph edits, the reader's view): the loaded one if
        there is one, else one without a model, so these stay instant on a fresh start."""
        with self._lock:
            if self._engine is not None:
                return self._engine
            from app.engine import Engine

            return Engine(self.session_factory, None, self.embedder(), snapshot_store=self._snapshot_store())

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


def open_store(config: Config):
    """Open (and migrate) the database named by the config; returns a session factory."""
    from memory.db import init_db, make_engine, make_sessionmaker
    from memory.private import private_dir

    private_dir(config.data_dir)
    engine = make_engine(config.database_url)
    init_db(engine, backups_dir=config.backups_dir)
    return make_sessionmaker(engine)
