"""The lock check (tools/check_lock.py) that `make test` runs: the repo's own lock agrees with its requirements, and
hand-made disagreeing pairs are each refused with a line that names the package."""

from __future__ import annotations

import subprocess
import sys
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

import pytest

from tools.check_lock import LOCK_FILE, ROOT, check, read_lock

TOP_LEVEL = "torch==2.13.0\ntransformers>=5.24,<6  # the cache API\n"
DEV = "# tests\npsycopg[binary]>=3.1\n"
LOCK = "torch==2.13.0\ntransformers==5.24.0\n    # via -r requirements.txt\npsycopg==3.3.9\npsycopg-binary==3.3.9\n"


def _project(tmp_path: Path, lock: str, top_level: str = TOP_LEVEL, dev: str = DEV) -> Path:
    (tmp_path / "requirements.txt").write_text(top_level)
    (tmp_path / "requirements-dev.txt").write_text(dev)
    (tmp_path / LOCK_FILE).write_text(lock)
    return tmp_path


def test_the_repo_lock_agrees_with_its_requirements():
    assert check(ROOT) == []


def test_the_venv_holds_what_the_lock_pins():
    pins, problems = read_lock(ROOT / LOCK_FILE)
    assert problems == [] and len(pins) > 50
    drifted = []
    for pin in pins.values():
        try:
            installed = version(pin.name)
        except PackageNotFoundError:
            installed = None
        # torch's local label (+cpu) names the build this machine takes for the locked version.
        if installed is None or installed.split("+")[0] != str(pin.version):
            drifted.append(f"{pin.name}: lock {pin.version}, installed {installed}")
    assert drifted == [], "run `make setup`"


def test_a_hand_made_agreeing_pair_passes(tmp_path):
    assert check(_project(tmp_path, LOCK)) == []


@pytest.mark.parametrize(("lock", "expected"), [
    (LOCK.replace("transformers==5.24.0", "transformers==5.23.0"), "transformers>=5.24,<6 is required but"),
    (LOCK.replace("transformers==5.24.0\n", ""), "transformers>=5.24,<6 is required but not in"),
    (LOCK.replace("psycopg==3.3.9\n", ""), "psycopg[binary]>=3.1 is required but not in"),
    (LOCK.replace("transformers==5.24.0", "transformers>=5.24"), "'transformers>=5.24' is not pinned"),
    (LOCK.replace("transformers==5.24.0", "transformers"), "'transformers' is not pinned"),
    (LOCK.replace("transformers==5.24.0", "transformers==5.*"), "is not pinned"),
    (LOCK + "-e ./vendor/transformers\n", "not a pin"),
    (LOCK + "Torch==2.13.0\n", "torch is pinned twice"),
    (LOCK + "nvidia-cublas==13.0.0\n", "nvidia-cublas is a CUDA wheel"),
])
def test_a_disagreeing_lock_is_refused_by_name(tmp_path, lock, expected):
    problems = check(_project(tmp_path, lock))
    assert any(expected in problem for problem in problems), problems


def test_a_requirement_the_lock_never_heard_of_is_refused(tmp_path):
    problems = check(_project(tmp_path, LOCK, dev=DEV + "hypothesis>=6.100\n"))
    assert problems == [f"hypothesis>=6.100 is required but not in {LOCK_FILE}: run `make lock`"]


def test_a_missing_lock_is_one_line(tmp_path):
    root = _project(tmp_path, LOCK)
    (root / LOCK_FILE).unlink()
    assert check(root) == [f"{LOCK_FILE} is missing from {root}: run `make lock`"]


def test_the_command_fails_with_the_reasons_on_stderr(tmp_path):
    root = _project(tmp_path, LOCK.replace("torch==2.13.0", "torch==2.12.0"))
    result = subprocess.run([sys.executable, str(ROOT / "tools" / "check_lock.py"), "--root", str(root)],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 1
    assert result.stderr.strip() == f"lock check: torch==2.13.0 is required but {LOCK_FILE} pins torch==2.12.0: run `make lock`"
