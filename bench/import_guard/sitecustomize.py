"""Import guard for bench.gpu_check: every Python process of a check (sections, pytest, bench.native's variants)
starts with this folder first on PYTHONPATH, so this runs at start-up in each of them.

The device has no gradio, SQLAlchemy or network, so those are made absent here too (`sys.modules[name] = None`:
`import` raises ModuleNotFoundError and `importlib.util.find_spec` returns None, as for a missing package). Our own
app/ and memory/ are present but must not be imported by the GPU path: at exit each process writes the ones it
loaded into $LONGHAND_IMPORT_GUARD_DIR, which gpu_check reads back. Then the site's own sitecustomize, if any, runs.
"""

import atexit
import importlib.util
import json
import os
import sys

ABSENT_ON_DEVICE = ("gradio", "sqlalchemy", "alembic", "sentence_transformers")
OURS_OFF_THE_GPU_PATH = ("app", "memory")
GUARD_DIR = os.path.dirname(os.path.abspath(__file__))

for _name in ABSENT_ON_DEVICE:
    sys.modules.setdefault(_name, None)


def _report() -> None:
    loaded = sorted(name for name in sys.modules
                    if name.split(".")[0] in OURS_OFF_THE_GPU_PATH and sys.modules[name] is not None)
    if loaded:
        path = os.path.join(os.environ["LONGHAND_IMPORT_GUARD_DIR"], f"{os.getpid()}.json")
        with open(path, "w") as handle:
            json.dump({"argv": sys.argv[:6], "modules": loaded[:20]}, handle)


if os.environ.get("LONGHAND_IMPORT_GUARD_DIR"):
    atexit.register(_report)


def _run_site_sitecustomize() -> None:
    # This module shadows the interpreter's own sitecustomize (if it has one): find the next one and run it.
    for entry in sys.path:
        if not entry or os.path.abspath(entry) == GUARD_DIR:
            continue
        candidate = os.path.join(entry, "sitecustomize.py")
        if os.path.isfile(candidate):
            spec = importlib.util.spec_from_file_location("_site_sitecustomize", candidate)
            module = importlib.util.module_from_spec(spec)
            spec.loader.exec_module(module)
            return


_run_site_sitecustomize()
