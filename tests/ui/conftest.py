"""Fixtures for the UI handler tests: a real SQLite store in a temp data dir, installed as the app's services."""

from __future__ import annotations

from pathlib import Path

import pytest

from app.config import Config
from app.ui import services
from app.wiring import open_parts
from tests.engine.engine_fakes import ScriptedGenerator


@pytest.fixture
def ui_config(data_dir: Path) -> Config:
    return Config(data_dir=data_dir, database_url=f"sqlite:///{data_dir / 'longhand.db'}")


@pytest.fixture
def ui_services(ui_config: Config) -> services.Services:
    installed = services.Services(open_parts(ui_config))
    services.install(installed)
    return installed


@pytest.fixture
def with_embedder(ui_services: services.Services, embedder) -> services.Services:
    """The services with the session's real MiniLM embedder (tests/conftest.py), instead of loading another."""
    ui_services.use_embedder(embedder)
    return ui_services


@pytest.fixture
def scripted(with_embedder: services.Services):
    """The services with the engine tests' scripted LM as the process-wide model (the real one runs in the slow
    browser test)."""
    generator = ScriptedGenerator()
    with_embedder.use_generator(generator)
    return generator
