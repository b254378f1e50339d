"""One command for a lent GPU: every GPU figure the README lacks, in order of value, in under eight minutes.

    PYTHONUNBUFFERED=1 python -m bench.gpu_check OUT_DIR              # on the device (CUDA, real Triton)
    python -m bench.gpu_check OUT_DIR --dry-run                       # rehearsal on a CPU: tiny shapes, interpreter
    python -m bench.gpu_check OUT_DIR --only kernel_bench             # one section again (a rerun)

Each section runs in its own process (its own process group) under its own time limit, killed at the limit with
the figures it had written kept, so a slow, hanging or crashing section never eats the rest. After every section
OUT_DIR holds gpu_check.json (versions, GPU, driver, per section: status, reason, seconds, figures),
gpu_check.txt (a short table) and gpu_check.log (every section's output): three files, within the device's eight.
The exit code is 0 whatever a section did; the JSON and the table say which failed and why.

It runs with what the device image has (python 3.12, torch 2.11, triton 3.6, transformers 5.17, pytest, numpy,
safetensors; no gradio, SQLAlchemy or network), not with our lock: every process it starts gets
bench/import_guard/ first on PYTHONPATH, whose sitecustomize makes gradio, sqlalchemy, alembic and
sentence_transformers absent and reports any import of app/ or memory/, which fails that section.

Budget on an H200 (limits in seconds; the whole run stops starting sections at TOTAL_BUDGET_S):

| section         | what                                                                          | limit | expected |
| --------------- | ----------------------------------------------------------------------------- | ----- | -------- |
| environment     | python, torch, triton, transformers, CUDA, driver, GPU name                   | 30    | 5        |
| kernel_tests    | pytest tests/kernels on CUDA (real Triton; 8 xdist workers where installed)   | 120   | 60       |
| gpu_tests       | pytest -m gpu over the test files that hold gpu-marked tests                  | 45    | 20       |
| kernel_bench    | bench.kernels at Mamba2-2.7B's SSD shape: scan 2k..128k, step, penalties+DRY | 75    | 40       |
|                 | at 10k/100k/1M history, bandwidth against spec sheet and a measured copy      |       |          |
| native_decode   | bench.native --device cuda at mamba2-2.7b: native, native_sampled,            | 140   | 100      |
|                 | hf_kernels, hf_torch (40 s each), fraction of the bandwidth roofline          |       |          |
| snapshot_resume | native mamba2-2.7b: first token after 10k/100k/500k tokens, bf16 snapshot     | 60    | 35       |
|                 | restored vs re-reading the manuscript                                         |       |          |
| total           |                                                                               | 470   | ~260     |

The dry run uses DRY_RUN_LIMITS and finishes in about two minutes on two cores.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import signal
import subprocess
import sys
import tempfile
import time
import traceback
from dataclasses import dataclass
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
GUARD_DIR = REPO / "bench" / "import_guard"
JSON_NAME, TEXT_NAME, LOG_NAME = "gpu_check.json", "gpu_check.txt", "gpu_check.log"
TOTAL_BUDGET_S = 470
DRY_RUN_BUDGET_S = 300
# Sections are not started with less than this left of the total budget: they could not finish.
MIN_SECTION_S = 5
PACKAGES = ("torch", "triton", "transformers", "numpy", "safetensors", "pytest", "pytest-xdist", "pytest-timeout",
            "mamba-ssm", "tokenizers", "huggingface-hub")
# Test files the dry run takes from tests/kernels: the whole folder runs in CI already (about 100 s here), the
# rehearsal only proves the harness (plugin, counts, log) works.
DRY_RUN_KERNEL_TESTS = ("tests/kernels/test_ssd_step.py", "tests/kernels/test_gated_norm.py")
XDIST_WORKERS = 8
# Ours against the fp32 reference at bf16 inputs lands between 1e-3 and 1e-2 (METHOD.md); past this it is wrong.
SCAN_RELATIVE_ERROR_LIMIT = 2e-2


@dataclass(frozen=True)
class Section:
    name: str
    what: str
    limit_s: int


SECTIONS = (
    Section("environment", "versions, CUDA, driver, GPU name", 30),
    Section("kernel_tests", "pytest tests/kernels on CUDA", 120),
    Section("gpu_tests", "pytest -m gpu over the files holding gpu-marked tests", 45),
    Section("kernel_bench", "scan/step tokens/s and bandwidth at Mamba2-2.7B shapes; penalties+DRY at 10k/100k/1M",
            75),
    Section("native_decode", "native runtime decode vs transformers (kernels, torch) and the bandwidth roofline",
            140),
    Section("snapshot_resume", "first token after 10k/100k/500k tokens: bf16 snapshot vs re-reading", 60),
)
SECTION_NAMES = tuple(section.name for section in SECTIONS)
DRY_RUN_LIMITS = {"environment": 30, "kernel_tests": 90, "gpu_tests": 60, "kernel_bench": 60, "native_decode": 120,
                  "snapshot_resume": 45}


# --- the parent: runs each section in a child process, writes the report ------------------------------------------


def main(argv: list[str] | None = None) -> int:
    args = _parse(argv)
    if args.child:
        return _child(args)
    out = Path(args.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    budget = args.budget_s or (DRY_RUN_BUDGET_S if args.dry_run else TOTAL_BUDGET_S)
    limits = {s.name: (DRY_RUN_LIMITS[s.name] if args.dry_run else s.limit_s) for s in SECTIONS}
    limits.update(args.limit)
    selected = [s for s in SECTIONS if not args.only or s.name in args.only]
    report = {
        "command": "python -m bench.gpu_check " + " ".join(argv if argv is not None else sys.argv[1:]),
        "started_utc": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "dry_run": args.dry_run,
        "budget_s": budget,
        "python": platform.python_version(),
        "packages": _package_versions(),
        "host": {"platform": platform.platform(), "cpu_count": os.cpu_count()},
        "sections": {},
    }
    started = time.monotonic()
    guard_dir = tempfile.mkdtemp(prefix="longhand-import-guard-")
    with open(out / LOG_NAME, "w") as log:
        for section in selected:
            left = budget - (time.monotonic() - started)
            limit = min(limits[section.name], left)
            if left < MIN_SECTION_S:
                result = {"status": "skipped", "seconds": 0.0, "limit_s": 0,
                          "reason": f"the total budget of {budget} s was spent before this section"}
            else:
                result = _run_section(section, limit, args, guard_dir, log)
            report["sections"][section.name] = {"what": section.what, **result}
            report["total_s"] = round(time.monotonic() - started, 1)
            _write_report(report, out)
            print(_summary_line(section.name, report["sections"][section.name]), flush=True)
    print((out / TEXT_NAME).read_text(), flush=True)
    return 0


def _parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out_dir", nargs="?", help="folder for gpu_check.json, gpu_check.txt and gpu_check.log")
    parser.add_argument("--dry-run", action="store_true",
                        help="rehearse on the CPU: tiny shapes, Triton's interpreter, one repetition")
    parser.add_argument("--only", nargs="+", choices=SECTION_NAMES, help="run these sections only (in order)")
    parser.add_argument("--limit", action="append", default=[], type=_name_value, metavar="SECTION=SECONDS",
                        help="override one section's time limit")
    parser.add_argument("--budget-s", type=int, default=None,
                        help=f"total seconds (default {TOTAL_BUDGET_S}; dry run {DRY_RUN_BUDGET_S})")
    parser.add_argument("--sabotage", action="append", default=[], type=_name_value, metavar="SECTION=raise|hang",
                        help="(tests) make a section raise or hang, to check that the others still run")
    parser.add_argument("--child", choices=SECTION_NAMES, help=argparse.SUPPRESS)
    parser.add_argument("--partial", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    args.limit = {name: int(value) for name, value in args.limit}
    args.sabotage = dict(args.sabotage)
    if not args.child and not args.out_dir:
        parser.error("give the output folder: python -m bench.gpu_check OUT_DIR")
    for name, action in args.sabotage.items():
        if action not in ("raise", "hang"):
            parser.error(f"--sabotage {name}={action}: the action must be raise or hang")
    return args


def _name_value(text: str) -> tuple[str, str]:
    name, _, value = text.partition("=")
    if name not in SECTION_NAMES or not value:
        raise argparse.ArgumentTypeError(f"expected SECTION=VALUE with SECTION one of {', '.join(SECTION_NAMES)}, "
                                         f"got {text!r}")
    return name, value


def _package_versions() -> dict[str, str | None]:
    versions = {}
    for name in PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    return versions


def _child_env(dry_run: bool, guard_dir: str) -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(GUARD_DIR), str(REPO), *filter(None, [env.get("PYTHONPATH")])])
    env["LONGHAND_IMPORT_GUARD_DIR"] = guard_dir
    env["PYTHONUNBUFFERED"] = "1"
    env["HF_HUB_OFFLINE"] = "1"
    env["TRANSFORMERS_OFFLINE"] = "1"
    if dry_run:
        # The rehearsal is the CPU path even on a machine with a GPU: Triton runs in its interpreter.
        env["TRITON_INTERPRET"] = "1"
        env["CUDA_VISIBLE_DEVICES"] = ""
    else:
        env.pop("TRITON_INTERPRET", None)
    return env


def _run_section(section: Section, limit: float, args: argparse.Namespace, guard_dir: str, log) -> dict:
    handle, partial_path = tempfile.mkstemp(prefix=f"gpu-check-{section.name}-", suffix=".json")
    os.close(handle)
    partial = Path(partial_path)
    command = [sys.executable, "-m", "bench.gpu_check", "--child", section.name, "--partial", partial_path]
    if args.dry_run:
        command.append("--dry-run")
    if section.name in args.sabotage:
        command += ["--sabotage", f"{section.name}={args.sabotage[section.name]}"]
    log.write(f"\n===== {section.name} (limit {limit:.0f} s): {' '.join(command[1:])}\n")
    log.flush()
    log_start = log.tell()
    guard_before = set(os.listdir(guard_dir))
    started = time.monotonic()
    process = subprocess.Popen(command, cwd=REPO, env=_child_env(args.dry_run, guard_dir), stdout=log,
                               stderr=subprocess.STDOUT, start_new_session=True)
    timed_out = False
    try:
        process.wait(timeout=limit)
    except subprocess.TimeoutExpired:
        timed_out = True
    # The child leads its own process group: this ends it and whatever it started (pytest workers, bench.native's
    # variant processes), whether it timed out or left something behind.
    try:
        os.killpg(process.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    process.wait()
    seconds = round(time.monotonic() - started, 1)
    log.flush()
    record = _read_partial(partial)
    partial.unlink(missing_ok=True)
    result = {"status": "ok", "seconds": seconds, "limit_s": round(limit), "figures": record.get("figures", {})}
    reasons = []
    if timed_out:
        running = record.get("figures", {}).get("running")
        reasons.append(f"timed out after {limit:.0f} s and was killed (the figures it had written are kept)"
                       + (f"; running: {running}" if running else ""))
    elif process.returncode != 0:
        reasons.append(record.get("error") or f"exit code {process.returncode}: {_last_line(log.name, log_start)}")
    elif not record.get("done"):
        reasons.append(f"exit code 0 but the section never finished: {_last_line(log.name, log_start)}")
    if record.get("problem"):
        reasons.append(record["problem"])
    forbidden = _guard_reports(guard_dir, guard_before)
    if forbidden:
        result["forbidden_imports"] = forbidden
        reasons.append("imported what the GPU path must not: " + "; ".join(
            f"{' '.join(item['argv'])} loaded {', '.join(item['modules'][:4])}" for item in forbidden))
    if reasons:
        result["status"] = "failed"
        result["reason"] = " | ".join(reasons)
        result["log_tail"] = _log_tail(log.name, log_start)
    return result


def _read_partial(path: Path) -> dict:
    try:
        return json.loads(path.read_text() or "{}")
    except (OSError, json.JSONDecodeError) as error:
        return {"error": f"could not read the section's figures: {error}"}


def _guard_reports(guard_dir: str, before: set[str]) -> list[dict]:
    reports = []
    for name in sorted(set(os.listdir(guard_dir)) - before):
        with open(os.path.join(guard_dir, name)) as handle:
            reports.append(json.load(handle))
    return reports


def _log_tail(path: str, start: int, lines: int = 15) -> list[str]:
    with open(path, errors="replace") as handle:
        handle.seek(start)
        return [line.rstrip()[:300] for line in handle.read().splitlines() if line.strip()][-lines:]


def _last_line(path: str, start: int) -> str:
    tail = _log_tail(path, start, lines=1)
    return tail[0] if tail else "no output"


def _write_report(report: dict, out: Path) -> None:
    for name, text in ((JSON_NAME, json.dumps(report, indent=2) + "\n"), (TEXT_NAME, summary_text(report))):
        temporary = out / (name + ".tmp")
        temporary.write_text(text)
        os.replace(temporary, out / name)


# --- the summary table -------------------------------------------------------------------------------------------


def summary_text(report: dict) -> str:
    """The short table: one line per section (status, seconds, its headline figures), then what failed and why."""
    env = report["sections"].get("environment", {}).get("figures", {})
    packages = report["packages"]
    lines = [
        f"Longhand GPU check{' (dry run, CPU)' if report['dry_run'] else ''}, {report['started_utc']}",
        f"GPU: {env.get('gpu_name') or 'none'}; driver {env.get('driver') or '?'}; CUDA {env.get('torch_cuda') or '-'}",
        f"python {report['python']}, torch {packages.get('torch')}, triton {packages.get('triton')}, "
        f"transformers {packages.get('transformers')}",
        "",
        f"{'section':<16} {'status':<8} {'seconds':>7} {'limit':>5}  result",
    ]
    for name, section in report["sections"].items():
        lines.append(_summary_line(name, section))
    failed = {name: s for name, s in report["sections"].items() if s["status"] != "ok"}
    lines.append("")
    lines.append(f"total {report.get('total_s', 0)} s of a {report['budget_s']} s budget; "
                 + (f"{len(failed)} section(s) not ok:" if failed else "every section ok"))
    for name, section in failed.items():
        lines.append(f"- {name} {section['status']}: {section.get('reason', '')[:600]}")
    return "\n".join(lines) + "\n"


def _summary_line(name: str, section: dict) -> str:
    try:
        headline = HEADLINES[name](section.get("figures", {}))
    except (KeyError, TypeError, ValueError, IndexError, ZeroDivisionError) as error:
        headline = f"(no headline: {type(error).__name__} {error})"
    return f"{name:<16} {section['status']:<8} {section['seconds']:>7} {section['limit_s']:>5}  {headline}"


def _fmt(value, digits: int = 3) -> str:
    if value is None:
        return "n/a"
    if isinstance(value, float):
        return f"{value:.{digits}g}"
    return str(value)


def _headline_environment(f: dict) -> str:
    return (f"{f.get('gpu_name') or 'no GPU'}, cuda_available={f.get('cuda_available')}, "
            f"TRITON_INTERPRET={f.get('triton_interpret')}")


def _headline_tests(f: dict) -> str:
    counts = f.get("counts", {})
    text = ", ".join(f"{counts.get(k, 0)} {k}" for k in ("passed", "failed", "error", "skipped"))
    return text + (f"; collection errors: {len(f['collection_errors'])}" if f.get("collection_errors") else "")


def _headline_kernel_bench(f: dict) -> str:
    parts = []
    if f.get("scan"):
        row = f["scan"][-1]
        parts.append(f"scan L={row['L']}: ours {_fmt(row.get('ours_tokens_per_s'))} tok/s "
                     f"({_fmt(row.get('ours_bandwidth_fraction_of_peak'))} of peak BW)")
    ours_step = f.get("step", {}).get("ours", {})
    if ours_step:
        parts.append(f"step {_fmt(ours_step.get('us'))} us ({_fmt(ours_step.get('fraction_of_peak'))} of peak)")
    if f.get("penalties_dry"):
        row = f["penalties_dry"][-1]
        parts.append(f"pen+DRY @{row['history_tokens']}: {_fmt(row['penalties_plus_dry_us_per_token'])} us/token")
    return "; ".join(parts) or "no rows"


def _headline_native(f: dict) -> str:
    parts = []
    for shape in f.get("shapes", []):
        for run in shape["runs"]:
            if run["variant"] == "native" and "tokens_per_s" in run:
                parts.append(f"{shape['shape']} native {_fmt(run['tokens_per_s'])} tok/s, "
                             f"{_fmt(run.get('fraction_of_peak_bandwidth') or run.get('fraction_of_measured_copy_bandwidth'))} of roofline, "
                             f"x{_fmt(run.get('speedup_vs_hf_torch'))} vs hf_torch")
    return "; ".join(parts) or "no native figure"


def _headline_snapshot(f: dict) -> str:
    rows = f.get("by_manuscript_tokens", {})
    return "; ".join(f"{length}: reread {_fmt(r['reread_ttft_s'])} s vs snapshot {_fmt(r['snapshot_ttft_s'])} s "
                     f"(x{_fmt(r['speedup'])})" for length, r in rows.items()) or "no rows"


HEADLINES = {"environment": _headline_environment, "kernel_tests": _headline_tests, "gpu_tests": _headline_tests,
             "kernel_bench": _headline_kernel_bench, "native_decode": _headline_native,
             "snapshot_resume": _headline_snapshot}


# --- the child: one section, its figures written as they come ------------------------------------------------------


class _Partial:
    """The section's record on disk, rewritten whole (atomically) at every update: killed at any moment, the parent
    still reads the last complete version."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.record: dict = {"figures": {}, "done": False}

    def write(self) -> None:
        temporary = self.path.with_suffix(".tmp")
        temporary.write_text(json.dumps(self.record, default=str))
        os.replace(temporary, self.path)

    def figures(self, figures: dict) -> None:
        self.record["figures"] = figures
        self.write()


def _child(args: argparse.Namespace) -> int:
    partial = _Partial(Path(args.partial))
    partial.write()
    try:
        action = args.sabotage.get(args.child)
        if action == "raise":
            raise RuntimeError(f"sabotaged ({args.child}=raise), as asked")
        if action == "hang":
            partial.figures({"before_hang": True})
            time.sleep(3600)
        figures = RUNNERS[args.child](args.dry_run, partial.figures)
        partial.record["figures"] = figures
        partial.record["problem"] = PROBLEMS.get(args.child, lambda f, dry: None)(figures, args.dry_run)
        partial.record["done"] = True
        partial.write()
        return 0
    except BaseException as error:  # noqa: BLE001 - the parent must learn why, whatever it was
        traceback.print_exc()
        partial.record["error"] = f"{type(error).__name__}: {(str(error).splitlines() or [''])[0][:300]}"
        partial.write()
        return 1


def _require_cuda(dry_run: bool):
    # Imported in the section's own process: the parent stays free of torch, so it reports even when torch or
    # CUDA fails to load.
    import torch

    if not dry_run and not torch.cuda.is_available():
        raise RuntimeError("no CUDA device (torch.cuda.is_available() is False): on a CPU run with --dry-run")
    return torch


def run_environment(dry_run: bool, update) -> dict:
    torch = _require_cuda(dry_run=True)
    import triton

    figures = {"python": platform.python_version(), "executable": sys.executable, "torch": torch.__version__,
               "torch_cuda": torch.version.cuda, "triton": triton.__version__,
               "transformers": _package_versions()["transformers"], "cuda_available": torch.cuda.is_available(),
               "triton_interpret": os.environ.get("TRITON_INTERPRET"), "cpu_count": os.cpu_count()}
    if torch.cuda.is_available():
        properties = torch.cuda.get_device_properties(0)
        figures.update(gpu_name=properties.name, capability=list(torch.cuda.get_device_capability(0)),
                       gpu_memory_gib=round(properties.total_memory / 2**30, 1),
                       multiprocessors=properties.multi_processor_count)
    else:
        figures["gpu_name"] = None
    try:
        smi = subprocess.run(["nvidia-smi", "--query-gpu=name,driver_version,memory.total,clocks.max.sm",
                              "--format=csv,noheader"], capture_output=True, text=True, timeout=20)
        fields = [field.strip() for field in smi.stdout.strip().splitlines()[0].split(",")] if smi.stdout else []
        figures["nvidia_smi"] = fields or smi.stderr.strip()[:200]
        figures["driver"] = fields[1] if len(fields) > 1 else None
    except (OSError, subprocess.TimeoutExpired) as error:
        figures["nvidia_smi"] = f"not available: {error}"
        figures["driver"] = None
    return figures


class _PytestOutcomes:
    """A pytest plugin that counts outcomes as they happen and names the test running, for the partial record."""

    def __init__(self, update) -> None:
        self.update = update
        self.figures: dict = {"counts": {}, "failures": [], "collection_errors": [], "running": None}

    def _count(self, outcome: str) -> None:
        self.figures["counts"][outcome] = self.figures["counts"].get(outcome, 0) + 1

    def pytest_collectreport(self, report) -> None:
        if report.failed:
            self.figures["collection_errors"].append(
                {"node": report.nodeid, "message": _failure_message(report)})
            self.update(self.figures)

    def pytest_runtest_logstart(self, nodeid, location) -> None:
        self.figures["running"] = nodeid
        self.update(self.figures)

    def pytest_runtest_logreport(self, report) -> None:
        if report.when == "call":
            outcome = report.outcome
        elif report.failed:
            outcome = "error"
        elif report.skipped and report.when == "setup":
            outcome = "skipped"
        else:
            return
        self._count(outcome)
        if outcome in ("failed", "error"):
            self.figures["failures"].append({"test": report.nodeid, "when": report.when,
                                             "message": _failure_message(report)})
        self.update(self.figures)


def _failure_message(report) -> str:
    # The crash line ("TypeError: ... got an unexpected keyword argument"), not just the file:line pytest ends on.
    crash = getattr(report.longrepr, "reprcrash", None)
    message = getattr(crash, "message", None)
    return message.splitlines()[0][:300] if message else _last_text_line(report.longreprtext)


def _last_text_line(text: str) -> str:
    lines = [line for line in text.strip().splitlines() if line.strip()]
    return lines[-1][:300] if lines else ""


def _pytest(targets: list[str], extra: list[str], update) -> dict:
    import pytest

    plugin = _PytestOutcomes(update)
    arguments = [*targets, "-q", "-p", "no:cacheprovider", "-o", "timeout=90", *extra]
    exit_code = pytest.main(list(arguments), plugins=[plugin])
    plugin.figures.update(running=None, pytest_args=arguments, exit_code=int(exit_code))
    return plugin.figures


def run_kernel_tests(dry_run: bool, update) -> dict:
    _require_cuda(dry_run)
    targets = list(DRY_RUN_KERNEL_TESTS) if dry_run else ["tests/kernels"]
    extra = []
    # Compiling each kernel variant dominates on a GPU; workers compile in parallel (the device has 16 cores).
    if not dry_run and _installed("xdist"):
        extra = ["-n", str(XDIST_WORKERS)]
    return _pytest(targets, extra, update)


def gpu_marked_test_files() -> list[str]:
    """Test files that hold `gpu`-marked tests, found by reading them (so a new one is never missed)."""
    return sorted(str(path.relative_to(REPO)) for path in (REPO / "tests").rglob("test_*.py")
                  if "pytest.mark.gpu" in path.read_text())


def run_gpu_tests(dry_run: bool, update) -> dict:
    _require_cuda(dry_run)
    files = gpu_marked_test_files()
    if not files:
        raise RuntimeError("no test file under tests/ holds a pytest.mark.gpu test")
    figures = _pytest(files, ["-m", "gpu"], update)
    figures["files"] = files
    return figures


def _installed(module: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(module) is not None


def run_kernel_bench(dry_run: bool, update) -> dict:
    _require_cuda(dry_run)
    from bench.kernels import TINY_GPU_SIZES, GpuSizes, bench_gpu

    return bench_gpu("cpu" if dry_run else "cuda", TINY_GPU_SIZES if dry_run else GpuSizes(), on_update=update)


def run_native_decode(dry_run: bool, update) -> dict:
    _require_cuda(dry_run)
    from bench import native

    if dry_run:
        return native.section("cpu", "float32", ["tiny-mamba2"], prompt_len=16, new_tokens=4, timeout=60,
                              on_update=update)
    # Mamba2-2.7B only: Bamba-9B and Mamba2-130M would not fit the budget next to it (`python -m bench.native
    # --device cuda` runs them all when there is time).
    return native.section("cuda", "bfloat16", ["mamba2-2.7b"], prompt_len=512, new_tokens=100, timeout=40,
                          on_update=update)


def run_snapshot_resume(dry_run: bool, update) -> dict:
    torch = _require_cuda(dry_run)
    from bench.native import CPU_SHAPES
    from bench.runtime import native_backend, snapshot_vs_reread
    from models.mamba2.config import PRESETS

    if dry_run:
        shape, config, device, dtype = "tiny-mamba2", CPU_SHAPES["tiny-mamba2"], "cpu", torch.float32
        manuscripts, prompt_tokens = (300, 1000, 3000), 16
    else:
        shape, config, device, dtype = "mamba2-2.7b", PRESETS["mamba2-2.7b"], "cuda", torch.bfloat16
        manuscripts, prompt_tokens = (10_000, 100_000, 500_000), 256
    backend = native_backend(config, device, dtype, max_seq_len=max(manuscripts) + prompt_tokens + 16)
    figures = {"shape": shape, "runtime": "models.mamba2 NativeBackend (random weights)", "dtype": str(dtype)}

    def with_shape(result: dict) -> None:
        update({**figures, **result})

    return {**figures, **snapshot_vs_reread(backend, manuscripts, prompt_tokens, on_update=with_shape)}


RUNNERS = {"environment": run_environment, "kernel_tests": run_kernel_tests, "gpu_tests": run_gpu_tests,
           "kernel_bench": run_kernel_bench, "native_decode": run_native_decode,
           "snapshot_resume": run_snapshot_resume}


# --- what makes a section that ran "failed" ------------------------------------------------------------------------


def _tests_problem(figures: dict, dry_run: bool) -> str | None:
    counts = figures.get("counts", {})
    bad = [f"{item['test']}: {item['message']}" for item in figures.get("failures", [])]
    if figures.get("collection_errors"):
        bad += [f"collecting {item['node']}: {item['message']}" for item in figures["collection_errors"]]
    if bad:
        return f"{len(bad)} test(s) failed: " + "; ".join(bad[:5])
    if not sum(counts.values()):
        return f"no test ran (pytest exit code {figures.get('exit_code')})"
    if figures.get("exit_code") not in (0, None):
        return f"pytest exit code {figures['exit_code']}"
    return None


def _gpu_tests_problem(figures: dict, dry_run: bool) -> str | None:
    problem = _tests_problem(figures, dry_run)
    if problem is None and not dry_run and not figures.get("counts", {}).get("passed"):
        return "every gpu-marked test was skipped on a machine with CUDA"
    return problem


def _kernel_bench_problem(figures: dict, dry_run: bool) -> str | None:
    bad = []
    for row in figures.get("scan", []):
        bad += [f"scan L={row['L']} {key}: {value}" for key, value in row.items() if key.endswith("_error")]
        error = row.get("ours_relative_error_vs_reference")
        if error is not None and error > SCAN_RELATIVE_ERROR_LIMIT:
            bad.append(f"scan L={row['L']}: ours is off the fp32 reference by {error:.2e} (relative)")
    bad += [f"step {name}: {value['error']}" for name, value in figures.get("step", {}).items() if "error" in value]
    return "; ".join(bad) or None


def _native_problem(figures: dict, dry_run: bool) -> str | None:
    bad = [f"{shape['shape']} {run['variant']}: {run['error']}" for shape in figures.get("shapes", [])
           for run in shape["runs"] if "error" in run]
    return "; ".join(bad) or None


PROBLEMS = {"kernel_tests": _tests_problem, "gpu_tests": _gpu_tests_problem, "kernel_bench": _kernel_bench_problem,
            "native_decode": _native_problem}


if __name__ == "__main__":
    raise SystemExit(main())
