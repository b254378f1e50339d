"""Without a browser: the guard's Host and Origin rules, what Gradio is told at launch, the private file modes of the
data dir, database, backups and exports, and `--share` refused without a login or without a way out (one line each,
from the real CLI)."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest
from gradio import tunneling

from app.config import Config
from app.ui import blocked_paths, gradio_dir, launch_options
from app.ui.guard import HostOriginGuard, Policy
from app.wiring import open_store
from memory import store
from memory.backup import backup
from memory.db import make_engine, make_sessionmaker, open_database
from memory.exchange import export_to_file
from tests.ui.security_helpers import REPO, app_env, free_port


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


# ---------------------------------------------------------------- the rules


def test_hosts_must_be_loopback_or_the_configured_host_with_the_configured_port():
    policy = Policy(port=7860, configured_host="studio.lan")
    for host in ("127.0.0.1:7860", "localhost:7860", "LOCALHOST:7860", "[::1]:7860", "studio.lan:7860"):
        assert policy.allows_host(host), host
    for host in ("evil.example:7860", "127.0.0.1:7861", "127.0.0.1", "localhost.:7860", "127.0.0.1:7860:1",
                 "", "user@127.0.0.1:7860", "[::1", "::1:7860", "192.168.1.9:7860"):
        assert not policy.allows_host(host), host


def test_listening_everywhere_allows_ip_literals_but_no_other_names():
    policy = Policy(port=7860, configured_host="0.0.0.0")
    assert policy.allows_host("192.168.1.9:7860") and policy.allows_host("[fe80::1]:7860")
    assert not policy.allows_host("evil.example:7860") and not policy.allows_host("0.0.0.0.evil:7860")


def test_origins_must_match_scheme_host_and_port_exactly():
    policy = Policy(port=7860)
    for origin in ("http://127.0.0.1:7860", "http://localhost:7860", "http://[::1]:7860"):
        assert policy.allows_origin(origin), origin
    for origin in ("https://127.0.0.1:7860", "http://127.0.0.1:8001", "http://127.0.0.1", "null", "",
                   "http://evil.example:7860", "http://127.0.0.1:7860/", "http://a@127.0.0.1:7860",
                   "http://127.0.0.1:7860.evil.example"):
        assert not policy.allows_origin(origin), origin
    policy.add_public_url("https://abc123.gradio.live/")
    assert policy.allows_origin("https://abc123.gradio.live") and policy.allows_host("abc123.gradio.live")
    assert not policy.allows_origin("http://abc123.gradio.live")


def test_event_calls_may_name_only_uploaded_files(tmp_path: Path):
    root = tmp_path / "gradio"
    (root / "abc").mkdir(parents=True)
    (root / "abc" / "novel.json").write_text("{}")
    (tmp_path / "gradio-evil").mkdir()
    policy = Policy(port=7860, upload_root=root, file_inputs={"10": {0}, "import_novel": {0}})

    def body(value):
        return {"fn_index": 10, "data": [value]}

    assert policy.event_refusal("/gradio_api/queue/join", body({"path": str(root / "abc" / "novel.json")})) is None
    assert policy.event_refusal("/gradio_api/queue/join", body(None)) is None
    for value in ({"path": "/etc/passwd"}, {"path": str(root / "abc" / ".." / ".." / "x")},
                  {"path": str(tmp_path / "gradio-evil" / "x")}, [{"nested": {"path": "/etc/hosts"}}],
                  {"path": "http://169.254.169.254/latest/meta-data"}):
        assert "a path on the server is not accepted" in policy.event_refusal("/gradio_api/queue/join",
                                                                             body(value)), value
    assert "not a path on the server" in policy.event_refusal("/gradio_api/call/import_novel",
                                                               {"data": ["/etc/passwd"]})


def test_launch_puts_the_guard_in_front_and_serves_only_gradios_folder(tmp_path: Path):
    data_dir = tmp_path / "data"
    for name in ("backups", "snapshots", "gradio"):
        (data_dir / name).mkdir(parents=True)
    config = Config(data_dir=data_dir, database_url=f"sqlite:///{data_dir / 'longhand.db'}", port=7999)
    options = launch_options(config)
    (middleware,) = options["app_kwargs"]["middleware"]
    assert middleware.cls is HostOriginGuard and middleware.kwargs["policy"].port == 7999
    blocked = blocked_paths(config)
    assert blocked == options["blocked_paths"]
    for name in ("backups", "snapshots", "exports", "models", "longhand.db"):
        assert str((data_dir / name).resolve()) in blocked, name
    assert not any(path.startswith(str(gradio_dir(config))) for path in blocked)
    assert options["max_file_size"] == "10mb" and options["allowed_paths"] == []


# ---------------------------------------------------------------- private files


def test_data_dir_database_backups_and_exports_are_private(tmp_path: Path):
    data_dir = tmp_path / "data"
    data_dir.mkdir(mode=0o755)
    os.chmod(data_dir, 0o755)
    # The store opened the way the app opens it (a data dir that existed before, world-readable, is tightened).
    config = Config(data_dir=data_dir, database_url=f"sqlite:///{data_dir / 'longhand.db'}")
    _, session_factory = open_store(config)
    with session_factory() as session, session.begin():
        novel_id = store.create_novel(session, title="Private", premise="Only mine.").id
    assert _mode(data_dir) == 0o700
    for name in ("longhand.db", "longhand.db-wal", "longhand.db-shm"):
        assert _mode(data_dir / name) == 0o600, name
    engine = session_factory.kw["bind"]
    saved = backup(engine, config.backups_dir, reason="mode check")
    assert _mode(config.backups_dir) == 0o700 and _mode(saved) == 0o600
    with session_factory() as session:
        exported = export_to_file(session, novel_id, config.exports_dir, "json")
    assert _mode(config.exports_dir) == 0o700 and _mode(exported) == 0o600


def test_a_database_elsewhere_is_made_private_in_a_new_folder(tmp_path: Path):
    database = tmp_path / "new-folder" / "novels.db"
    engine, session_factory = open_database(f"sqlite:///{database}")
    with session_factory() as session, session.begin():
        store.create_novel(session, title="Elsewhere")
    assert _mode(database.parent) == 0o700 and _mode(database) == 0o600
    engine.dispose()
    # An existing world-readable database file is tightened when it is opened again.
    os.chmod(database, 0o644)
    with make_sessionmaker(make_engine(f"sqlite:///{database}"))() as session:
        assert [n.title for n in store.list_novels(session)] == ["Elsewhere"]
    assert _mode(database) == 0o600


def test_a_folder_the_user_chose_is_left_as_it_is_but_the_export_is_private(tmp_path: Path):
    chosen = tmp_path / "Desktop"
    chosen.mkdir()
    os.chmod(chosen, 0o755)
    _, session_factory = open_database(f"sqlite:///{tmp_path / 'data' / 'longhand.db'}")
    with session_factory() as session, session.begin():
        novel_id = store.create_novel(session, title="Shared folder").id
    with session_factory() as session:
        exported = export_to_file(session, novel_id, chosen, "md")
    assert _mode(chosen) == 0o755 and _mode(exported) == 0o600


# ---------------------------------------------------------------- --share


def _serve(tmp_path: Path, *flags: str, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "app", "serve", "--data-dir", str(tmp_path / "data"), "--port", str(free_port()),
         *flags], cwd=REPO, env=app_env(HF_HOME=str(tmp_path / "hf"), **env), capture_output=True, text=True,
        timeout=300)


@pytest.mark.timeout(600)
def test_share_without_auth_is_refused_in_one_line(tmp_path: Path):
    result = _serve(tmp_path, "--share")
    assert result.returncode == 2
    assert result.stderr.strip() == ("longhand: --share makes the app reachable by anyone with the link: "
                                     "add --auth user:password.")
    assert "Traceback" not in result.stdout + result.stderr


@pytest.mark.timeout(600)
def test_share_without_the_tunnel_program_is_refused_in_one_line(tmp_path: Path):
    result = _serve(tmp_path, "--share", "--auth", "writer:pass")
    assert result.returncode == 2
    (line,) = result.stderr.strip().splitlines()
    assert line.startswith("longhand: --share needs Gradio's tunnel program") and str(tmp_path / "hf") in line
    assert "Traceback" not in result.stdout + result.stderr


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_share_with_no_way_to_the_share_server_is_reported_in_one_line(tmp_path: Path):
    # A tunnel program is there, but the share server (a closed local port here) cannot be reached.
    binary = tmp_path / "hf" / Path(tunneling.BINARY_PATH).relative_to(tunneling.HF_HOME)
    binary.parent.mkdir(parents=True)
    binary.write_text("#!/bin/sh\nexit 1\n")
    binary.chmod(0o700)
    result = _serve(tmp_path, "--share", "--auth", "writer:pass",
                    GRADIO_SHARE_SERVER_ADDRESS=f"127.0.0.1:{free_port()}")
    assert result.returncode == 2, result.stdout + result.stderr
    assert result.stderr.strip().splitlines()[-1] == (
        "longhand: --share could not open a public link (no connection to Gradio's share server); "
        "nothing is served.")
    assert "Traceback" not in result.stdout + result.stderr
