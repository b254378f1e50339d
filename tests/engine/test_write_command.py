"""`python -m app write`: bad input is refused with one line before any model is loaded; the demo premises load."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from app.engine.premises import PremiseError, demo_premise_paths, load_premise

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
