"""The one wiring function: `open_parts(config)` builds the app's parts for the UI, the CLI and the benchmarks.

Parts: the store's session factory (through `memory.db.open_database`, so a database needing a migration is backed
up first), the snapshot store, the model service (the embedder and the one language model, both loaded on first
use, one model in memory at a time) and `engine()`. Nothing heavy happens in `open_parts`: opening the page or
parsing the CLI's flags never waits for a model.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from pathlib import Path

from sqlalchemy import Engine as DatabaseEngine
from sqlalchemy.orm import Session, sessionmaker

from app.config import Config, check_model_allowed
from app.engine import Engine
from app.offline import ModelSource, default_embedder_path, resolve_model
from memory.db import open_database
from memory.private import private_dir
from memory.snapshots import FileSnapshotStore


@dataclass
class ModelService:
    """The process-wide embedder and language model, each loaded on first use under one lock.

    `generator(model, device, dtype)` returns the loaded model when it is the one asked for, else unloads it and
    loads the new one: one language model in memory at a time. Every request passes `check_model_allowed`, so a
    server a novel's stored settings name is refused at step time when this launch does not allow it.
    """

    config: Config
    source: ModelSource  # what `--model` resolved to
    models_dir: Path
    _generator: object = None
    _generator_key: tuple | None = None
    _embedder: object = None
    _lock: threading.RLock = field(default_factory=threading.RLock)

    def embedder(self):
        with self._lock:
            if self._embedder is None:
                # Imported here: sentence-transformers (and torch) load only when the first embedding is needed.
                from memory.retrieval import Embedder

                config = self.config
                path = default_embedder_path() if config.embedder == "default" else Path(config.embedder)
                self._embedder = Embedder(str(path))
            return self._embedder

    def use_embedder(self, embedder) -> None:
        """Serve an embedder loaded elsewhere (a test's shared one)."""
        with self._lock:
            self._embedder = embedder

    def generator(self, model: str | None = None, device: str | None = None, dtype: str | None = None):
        """The TextGenerator for `model` (a `--model` string; None or "" = the one the app started with)."""
        device = device or self.config.device
        dtype = dtype or self.config.dtype
        with self._lock:
            check_model_allowed(model or self.config.model, self.config)
            source = self.source if model in (None, "", self.config.model) else resolve_model(
                model, self.models_dir, self.config.allow_download)
            key = (source.kind, source.location, device, dtype)
            if self._generator is None or self._generator_key != key:
                # Imported here: torch, transformers and llama-cpp load only when the first step needs a model.
                from models.service import load_generator

                self._generator = None
                self._generator = load_generator(source, device=device, dtype=dtype, cache_dir=self.models_dir,
                                                 trust_remote_code=self.config.trust_remote_code,
                                                 gguf_backend=self.config.gguf_backend,
                                                 gguf_requantize=self.config.gguf_requantize,
                                                 threads=self.config.threads)
                self._generator_key = key
            return self._generator

    def use_generator(self, generator) -> None:
        """Serve the app's own model (`--model`) with a generator loaded elsewhere (tests, or a caller that
        already holds one)."""
        with self._lock:
            self._generator = generator
            self._generator_key = (self.source.kind, self.source.location, self.config.device, self.config.dtype)

    def loaded_generator(self):
        """The model if one is loaded already, else None (counting tokens must not trigger a load)."""
        return self._generator


@dataclass(frozen=True)
class Parts:
    """What `open_parts` built; `engine()` puts them together."""

    config: Config
    database: DatabaseEngine
    session_factory: sessionmaker[Session]
    snapshot_store: FileSnapshotStore
    models: ModelService

    def embedder(self):
        return self.models.embedder()

    def engine(self, generator=None) -> Engine:
        """The writing engine. With no `generator` it resolves each novel's model from the novel's own settings at
        every step (the UI); with one, it writes every novel with that model (the CLI and the benchmarks, which
        load `--model` up front)."""
        models = self.models if generator is None else None
        return Engine(self.session_factory, generator, self.embedder(), snapshot_store=self.snapshot_store,
                      models=models, lm_rerank=self.config.lm_rerank)


def open_store(config: Config) -> tuple[DatabaseEngine, sessionmaker[Session]]:
    """Open (create, or back up and migrate) the database the config names, with the data dir made private."""
    private_dir(config.data_dir)
    return open_database(config.database_url, config.backups_dir)


def open_parts(config: Config, *, source: ModelSource | None = None, models_dir: Path | None = None) -> Parts:
    """Every part the app needs, built from `config` alone (`source`: `--model` already resolved; `models_dir`:
    where model caches go, when not `<data dir>/models`). Loads no model."""
    models_dir = config.models_dir if models_dir is None else Path(models_dir)
    if source is None:
        source = resolve_model(config.model, models_dir, config.allow_download)
    database, session_factory = open_store(config)
    return Parts(config=config, database=database, session_factory=session_factory,
                 snapshot_store=FileSnapshotStore(session_factory, config.data_dir / "snapshots"),
                 models=ModelService(config=config, source=source, models_dir=models_dir))
