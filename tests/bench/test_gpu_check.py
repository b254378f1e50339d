"""bench.gpu_check rehearsed on the CPU: the dry run goes through every section end to end, a section that fails or
hangs is reported as failed while the others still run, and the import guard really keeps gradio, SQLAlchemy and
our app/ and memory/ off the GPU path."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from bench.gpu_check import GUARD_DIR, JSON_NAME, LOG_NAME, SECTION_NAMES, TEXT_NAME

REPO = Path(__file__).resolve().parents[2]


def run_check(out: Path, *extra: str, timeout: int = 400) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "bench.gpu_check", str(out), "--dry-run", *extra], cwd=REPO,
                          capture_output=True, text=True, timeout=timeout)


def read_report(out: Path) -> tuple[dict, str]:
    return json.loads((out / JSON_NAME).read_text()), (out / TEXT_NAME).read_text()


def test_dry_run_runs_every_section_and_reports_each(tmp_path):
    done = run_check(tmp_path)
    assert done.returncode == 0, done.stderr[-2000:]
    report, summary = read_report(tmp_path)
    assert sorted(os.listdir(tmp_path)) == sorted([JSON_NAME, TEXT_NAME, LOG_NAME])
    sections = report["sections"]
    assert list(sections) == list(SECTION_NAMES)
    not_ok = {name: section.get("reason") for name, section in sections.items() if section["status"] != "ok"}
    assert not not_ok
    for name in SECTION_NAMES:
        line = next(line for line in summary.splitlines() if line.startswith(name + " "))
        assert line.split()[1] == "ok"
        assert sections[name]["seconds"] > 0
        assert "forbidden_imports" not in sections[name]
    assert "every section ok" in summary
    assert report["packages"]["torch"] and report["packages"]["triton"] and report["packages"]["transformers"]

    figures = {name: sections[name]["figures"] for name in SECTION_NAMES}
    assert figures["environment"]["torch"] and figures["environment"]["triton_interpret"] == "1"
    assert figures["kernel_tests"]["counts"]["passed"] > 0 and not figures["kernel_tests"]["failures"]
    # Without CUDA the gpu-marked tests are collected and skipped, not missed.
    assert figures["gpu_tests"]["counts"].get("skipped", 0) > 0 and figures["gpu_tests"]["files"]
    bench = figures["kernel_bench"]
    assert [row["L"] for row in bench["scan"]] == list(bench["sizes"]["scan_lengths"])
    assert all(row["ours_tokens_per_s"] > 0 and row["ours_relative_error_vs_reference"] < 2e-2
               for row in bench["scan"])
    assert bench["step"]["ours"]["us"] > 0
    assert [row["history_tokens"] for row in bench["penalties_dry"]] == list(bench["sizes"]["histories"])
    runs = figures["native_decode"]["shapes"][0]["runs"]
    assert [run["variant"] for run in runs] == ["native", "native_sampled", "hf_kernels", "hf_torch"]
    assert all(run["tokens_per_s"] > 0 for run in runs)
    resumed = figures["snapshot_resume"]["by_manuscript_tokens"]
    assert len(resumed) == 3
    for row in resumed.values():
        assert row["snapshot_ttft_s"] > 0 and row["reread_ttft_s"] > 0 and row["snapshot_bytes"] > 0
        # A bf16 snapshot rounds the state: the first token's logits stay close to re-reading's.
        assert row["first_token_logits_max_abs_difference"] < 0.1


def test_a_failing_and_a_hanging_section_are_reported_while_the_rest_runs(tmp_path):
    done = run_check(tmp_path, "--only", "environment", "kernel_tests", "gpu_tests",
                     "--sabotage", "environment=hang", "--limit", "environment=4",
                     "--sabotage", "kernel_tests=raise", timeout=200)
    assert done.returncode == 0, done.stderr[-2000:]
    report, summary = read_report(tmp_path)
    sections = report["sections"]
    assert list(sections) == ["environment", "kernel_tests", "gpu_tests"]

    hung = sections["environment"]
    assert hung["status"] == "failed" and "timed out after 4 s" in hung["reason"]
    # What it wrote before it hung is kept.
    assert hung["figures"] == {"before_hang": True}
    assert hung["seconds"] < 30

    raised = sections["kernel_tests"]
    assert raised["status"] == "failed" and "sabotaged (kernel_tests=raise)" in raised["reason"]
    assert any("RuntimeError" in line for line in raised["log_tail"])

    assert sections["gpu_tests"]["status"] == "ok"
    assert "2 section(s) not ok" in summary
    assert "- environment failed: timed out" in summary and "- kernel_tests failed: RuntimeError" in summary


def test_the_import_guard_makes_gradio_and_sqlalchemy_absent_and_reports_our_app(tmp_path):
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(GUARD_DIR), str(REPO)]),
           "LONGHAND_IMPORT_GUARD_DIR": str(tmp_path)}
    script = ("import importlib.util\n"
              "for name in ('gradio', 'sqlalchemy'):\n"
              "    assert importlib.util.find_spec(name) is None, name\n"
              "    try:\n"
              "        __import__(name)\n"
              "    except ModuleNotFoundError:\n"
              "        pass\n"
              "    else:\n"
              "        raise SystemExit(name + ' imported')\n"
              "import models.snapshots, app.offline\n")
    done = subprocess.run([sys.executable, "-c", script], cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    reports = [json.loads(path.read_text()) for path in tmp_path.glob("*.json")]
    assert len(reports) == 1
    assert "app.offline" in reports[0]["modules"] and not any(m.startswith("models") for m in reports[0]["modules"])
