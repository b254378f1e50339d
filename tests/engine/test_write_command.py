"""`python -m app write`: bad input is refused with one line before any model is loaded; the demo premises load."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from app.engine.premises import PremiseError, demo_premise_paths, load_premise
from tests.engine.engine_fakes import ScriptedGenerator

REPO = Path(__file__).resolve().parents[2]


def run_cli(*args: str, data_dir: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "app", "write", "--data-dir", str(data_dir), *args], cwd=REPO,
                          capture_output=True, text=True, timeout=120)


def test_five_demo_premises_with_needles():
    premises = [load_premise(path) for path in demo_premise_paths()]
    assert len(premises) >= 5
    assert len({p.id for p in premises}) == len(premises)
    for premise in premises:
        assert premise.premise and premise.lore and premise.needle
        assert premise.needle["fact"] not in premise.premise


def test_bad_premise_files_are_refused_clearly(tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text('{"premise": ""}', encoding="utf-8")
    with pytest.raises(PremiseError, match="non-empty"):
        load_premise(bad)
    bad.write_bytes(b"\xff\xfe{")
    with pytest.raises(PremiseError, match="UTF-8 JSON"):
        load_premise(bad)


@pytest.mark.parametrize("args,message", [
    (["--premise", "missing.json"], "No premise file at missing.json"),
    (["--premise", "A keeper.", "--steps", "0"], "--steps must be at least 1"),
])
def test_write_command_fails_with_one_line(tmp_path, args, message):
    result = run_cli(*args, data_dir=tmp_path)
    assert result.returncode == 2
    assert message in result.stderr
    assert "Traceback" not in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


BAD_SETTINGS = {"sampling": {"temperature": "hot", "seed": 5}, "context_tokens": 10**12}
NOTICE = "temperature must be a number between 0 and 2, got 'hot' (the default 0.8 is used)"


def _novel_with_bad_settings(data_dir: Path, small: dict | None = None) -> tuple[object, int]:
    from memory import store
    from memory.db import open_database

    _, session_factory = open_database(f"sqlite:///{data_dir / 'longhand.db'}")
    with session_factory() as session, session.begin():
        novel = store.create_novel(session, "Bad settings", premise="A keeper finds a bottle.",
                                   settings={**(small or {}), **BAD_SETTINGS})
        store.add_paragraph(session, novel.id, "The keeper found a green bottle on the shore at dawn.")
        return session_factory, novel.id


def test_write_command_continues_a_novel_with_bad_stored_settings(data_dir, capsys, monkeypatch):
    """A database row written with bad settings: the command says which and writes with the defaults for them
    (the engine tests' scripted LM stands in for the model; the real one runs in the slow test below)."""
    import models.service
    from app.cli import main
    from memory import store

    session_factory, novel_id = _novel_with_bad_settings(data_dir)
    monkeypatch.setattr(models.service, "load_generator", lambda *args, **kwargs: ScriptedGenerator())
    code = main(["write", "--data-dir", str(data_dir), "--novel", str(novel_id), "--steps", "2",
                 "--plan", "She opens the bottle."])
    out, err = capsys.readouterr()
    assert code == 0, err
    assert "note: This novel's saved settings had bad values" in out and NOTICE in out
    with session_factory() as session:
        assert store.paragraph_count(session, novel_id) == 3
    # With a flag that changes settings, the repaired settings are saved with it (and said so once).
    code = main(["write", "--data-dir", str(data_dir), "--novel", str(novel_id), "--steps", "1", "--seed", "9"])
    out, _ = capsys.readouterr()
    assert code == 0 and out.count(NOTICE) == 1
    with session_factory() as session:
        saved = store.get_novel(session, novel_id).settings
    assert saved["sampling"]["temperature"] == 0.8 and saved["sampling"]["seed"] == 9
    assert saved["context_tokens"] == 2048


@pytest.mark.slow
def test_write_command_with_the_real_model_on_bad_stored_settings(tmp_path):
    small = {"max_new_tokens": 24, "memory_words": 20, "plan_tokens": 32, "paragraph_words": 15, "max_attempts": 1}
    session_factory, novel_id = _novel_with_bad_settings(tmp_path, small)
    result = subprocess.run([sys.executable, "-m", "app", "write", "--data-dir", str(tmp_path), "--novel",
                             str(novel_id), "--steps", "1", "--plan", "She opens the bottle."], cwd=REPO,
                            capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stderr and NOTICE in result.stdout


def test_write_command_checks_its_setting_flags_before_loading(tmp_path):
    result = run_cli("--premise", "A keeper.", "--max-new-tokens", "0", data_dir=tmp_path)
    assert result.returncode == 2
    assert "max_new_tokens (paragraph length) must be a whole number between 1 and 4096, got 0" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
