"""What every benchmark's result file records besides its figures: the machine, the commit, and the writing itself.

Imports nothing heavy (no torch): the benchmarks that set thread counts before loading torch can import it first.
"""

from __future__ import annotations

import json
import os
import platform
import subprocess
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def cpu_name() -> str:
    """The CPU's model name (from /proc/cpuinfo where there is one)."""
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            return next(line.split(":", 1)[1].strip() for line in cpuinfo if line.startswith("model name"))
    except (OSError, StopIteration):
        return platform.processor() or platform.machine()


def machine(*, torch_threads: int | None = None, load_average_at_start: list[float] | None = None,
            **extra) -> dict:
    """The machine a run measured on; `load_average_at_start` defaults to now (call it before the timing then).
    Other work on a shared machine shows in every figure, so the load is always part of the record."""
    return {
        "platform": platform.platform(),
        "python": platform.python_version(),
        "cpu": cpu_name(),
        "logical_cpus": os.cpu_count(),
        "torch_threads": torch_threads,
        "load_average_at_start": list(os.getloadavg()) if load_average_at_start is None else load_average_at_start,
        **extra,
    }


def commit(*paths: str) -> str | None:
    """The checked-out commit (`+changes` when tracked files under `paths` differ from it); None outside git."""
    try:
        head = subprocess.run(["git", "rev-parse", "--short=12", "HEAD"], cwd=REPO, capture_output=True, text=True,
                              check=True).stdout.strip()
        dirty = subprocess.run(["git", "diff", "--quiet", "HEAD", "--", *paths], cwd=REPO).returncode != 0
    except (OSError, subprocess.CalledProcessError):
        return None
    return head + ("+changes" if dirty else "")


def write_result(path: Path | str, result: dict) -> None:
    """`result` as indented JSON at `path` (its folder made if needed), and a line saying so."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    print(f"wrote {path}")
