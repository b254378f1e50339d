"""app/__main__.py's map of one Next step click names files and functions: each must still exist, so the map
cannot drift from the code unnoticed."""

from __future__ import annotations

import re
from pathlib import Path

import app.__main__

REPO = Path(__file__).resolve().parents[1]


def test_the_next_step_map_names_only_files_and_functions_that_exist():
    text = app.__main__.__doc__
    files = set(re.findall(r"\b((?:app|memory|models|kernels)/[\w/]+\.py)\b", text))
    assert {"app/ui/write.py", "app/engine/core.py", "app/wiring.py", "memory/store.py"} <= files
    missing = sorted(name for name in files if not (REPO / name).is_file())
    assert not missing, f"the map names files that do not exist: {missing}"
    sources = "\n".join((REPO / name).read_text(encoding="utf-8") for name in files)
    called = set(re.findall(r"\b(\w+)\(\)", text))
    assert {"next_step", "step", "_read", "_for_novel", "commit_step"} <= called
    undefined = sorted(name for name in called if not re.search(rf"\bdef {name}\(", sources))
    assert not undefined, f"the map names functions no file it names defines: {undefined}"
