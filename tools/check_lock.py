"""Checks that requirements.lock agrees with the top-level lists: `make test` runs it before the tests.

The lock agrees when every line in it is one exact `name==version` pin (no ranges, URLs or editables), it names no
CUDA wheels (torch brings those itself on a GPU box), and every top-level requirement is in it at a version its
specifier admits. Standard library plus `packaging` only, so it runs in any set-up venv.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass
from pathlib import Path

from packaging.requirements import InvalidRequirement, Requirement
from packaging.utils import canonicalize_name
from packaging.version import InvalidVersion, Version

ROOT = Path(__file__).resolve().parent.parent
TOP_LEVEL_FILES = ("requirements.txt", "requirements-dev.txt")
LOCK_FILE = "requirements.lock"
# A CPU machine must never download these, and on a GPU box torch's own pins choose them.
CUDA_PREFIXES = ("nvidia-", "cuda-")


@dataclass(frozen=True)
class Pin:
    name: str  # canonical (PEP 503) name
    version: Version
    line: int


def _requirement_lines(text: str):
    """(line number, requirement text) for each line that is not blank or a comment."""
    for number, raw in enumerate(text.splitlines(), start=1):
        stripped = raw.split(" #", 1)[0].strip()
        if stripped and not stripped.startswith("#"):
            yield number, stripped


def read_top_level(path: Path) -> tuple[list[tuple[Requirement, str]], list[str]]:
    """Each requirement with its text as written (messages quote that, not packaging's reordered form)."""
    requirements, problems = [], []
    for number, text in _requirement_lines(path.read_text()):
        try:
            requirements.append((Requirement(text), text))
        except InvalidRequirement as error:
            problems.append(f"{path.name}:{number}: not a requirement ({error}): {text!r}")
    return requirements, problems


def read_lock(path: Path) -> tuple[dict[str, Pin], list[str]]:
    pins: dict[str, Pin] = {}
    problems = []
    for number, text in _requirement_lines(path.read_text()):
        where = f"{path.name}:{number}"
        try:
            requirement = Requirement(text)
        except InvalidRequirement as error:
            problems.append(f"{where}: not a pin ({error}): {text!r}")
            continue
        specifiers = list(requirement.specifier)
        if requirement.url or len(specifiers) != 1 or specifiers[0].operator != "==" or "*" in specifiers[0].version:
            problems.append(f"{where}: {text!r} is not pinned to one exact version (name==version)")
            continue
        name = canonicalize_name(requirement.name)
        if name in pins:
            problems.append(f"{where}: {name} is pinned twice (also on line {pins[name].line})")
            continue
        try:
            pins[name] = Pin(name, Version(specifiers[0].version), number)
        except InvalidVersion:
            problems.append(f"{where}: {text!r} has an invalid version")
    return pins, problems


def disagreements(requirements: list[tuple[Requirement, str]], pins: dict[str, Pin]) -> list[str]:
    problems = []
    for pin in pins.values():
        if pin.name.startswith(CUDA_PREFIXES):
            problems.append(f"{LOCK_FILE}:{pin.line}: {pin.name} is a CUDA wheel; the lock must not pull those in")
    for requirement, text in requirements:
        if requirement.marker is not None and not requirement.marker.evaluate():
            continue
        name = canonicalize_name(requirement.name)
        pin = pins.get(name)
        if pin is None:
            problems.append(f"{text} is required but not in {LOCK_FILE}: run `make lock`")
        elif not requirement.specifier.contains(pin.version, prereleases=True):
            problems.append(f"{text} is required but {LOCK_FILE} pins {name}=={pin.version}: run `make lock`")
    return problems


def check(root: Path) -> list[str]:
    """Every problem found, one line each; empty when the lock agrees with the top-level lists."""
    requirements, problems = [], []
    for name in TOP_LEVEL_FILES:
        if not (root / name).is_file():
            problems.append(f"{name} is missing from {root}")
            continue
        found, bad = read_top_level(root / name)
        requirements += found
        problems += bad
    if not (root / LOCK_FILE).is_file():
        return problems + [f"{LOCK_FILE} is missing from {root}: run `make lock`"]
    pins, bad = read_lock(root / LOCK_FILE)
    return problems + bad + disagreements(requirements, pins)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", type=Path, default=ROOT, help="folder holding the requirements files")
    root = parser.parse_args(argv).root
    problems = check(root)
    for problem in problems:
        print(f"lock check: {problem}", file=sys.stderr)
    if not problems:
        print(f"lock check: {LOCK_FILE} agrees with {' and '.join(TOP_LEVEL_FILES)}")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
