"""The served app over plain HTTP: which Host, Origin and Sec-Fetch-Site combinations reach it, cross-origin
uploads, the total upload limit per request, Gradio's upload folder inside the data dir, private file modes, and an
import given a server path. One real app (`python -m app serve`) in a subprocess for the module."""

from __future__ import annotations

import stat
import uuid

import httpx
import pytest

from tests.ui.security_helpers import SEED_TITLE, call_event, fn_index, novel_titles, served

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]

MB = 1024 * 1024


@pytest.fixture(scope="module")
def app(tmp_path_factory):
    with served(tmp_path_factory.mktemp("security")) as running:
        yield running


@pytest.fixture(scope="module")
def config(app) -> dict:
    base, _, _, _ = app
    return httpx.get(f"{base}/config", timeout=30).json()


def _request(base: str, method: str, route: str, headers: dict, **kwargs) -> httpx.Response:
    return httpx.request(method, f"{base}{route}", headers=headers, timeout=30, **kwargs)


def _join_body(index: int, data: list) -> dict:
    return {"data": data, "fn_index": index, "trigger_id": None, "session_hash": uuid.uuid4().hex[:12],
            "event_data": None}


def test_foreign_hosts_and_origins_are_refused_on_every_route(app, config):
    base, port, data_dir, _ = app
    before = novel_titles(data_dir)
    assert SEED_TITLE in before
    other = port + 1 if port < 65535 else port - 1
    list_index = fn_index(config, "refresh_all")
    refused = {
        "rebound name": {"Host": f"evil.example:{port}"},
        "loopback, other port": {"Host": f"127.0.0.1:{other}"},
        "no host": {"Host": ""},
        "origin on another port": {"Origin": f"http://127.0.0.1:{other}"},
        "origin of a rebound name": {"Origin": f"http://evil.example:{port}"},
        "origin https": {"Origin": f"https://127.0.0.1:{port}"},
        "origin null": {"Origin": "null"},
        "same-site, no origin": {"Sec-Fetch-Site": "same-site", "Sec-Fetch-Mode": "cors"},
        "cross-site, no origin": {"Sec-Fetch-Site": "cross-site", "Sec-Fetch-Mode": "no-cors"},
    }
    routes = [
        ("GET", "/", {}),
        ("GET", "/config", {}),
        ("GET", "/gradio_api/info", {}),
        ("POST", "/gradio_api/queue/join", {"json": _join_body(list_index, [None])}),
        ("GET", "/gradio_api/queue/data?session_hash=abc", {}),
        ("POST", "/gradio_api/upload", {"files": {"files": ("a.txt", b"text", "text/plain")}}),
        ("GET", f"/gradio_api/file={data_dir / 'longhand.db'}", {}),
        ("POST", "/login", {"data": {"username": "a", "password": "b"}}),
    ]
    for name, headers in refused.items():
        for method, route, kwargs in routes:
            response = _request(base, method, route, headers, **kwargs)
            assert response.status_code == 403, (name, method, route, response.status_code, response.text[:200])
            assert "not" in response.text and len(response.text.splitlines()) == 1
            assert SEED_TITLE not in response.text
    assert novel_titles(data_dir) == before


def test_the_apps_own_addresses_and_plain_navigation_are_served(app):
    base, port, _, _ = app
    allowed = [
        {},
        {"Host": f"localhost:{port}", "Origin": f"http://localhost:{port}"},
        {"Host": f"[::1]:{port}", "Origin": f"http://[::1]:{port}"},
        {"Origin": f"http://127.0.0.1:{port}", "Sec-Fetch-Site": "same-origin"},
    ]
    for headers in allowed:
        assert _request(base, "GET", "/config", headers).status_code == 200, headers
    # A link from another site to the app opens it (a navigation reads nothing the page could see).
    navigation = {"Sec-Fetch-Site": "cross-site", "Sec-Fetch-Mode": "navigate"}
    assert _request(base, "GET", "/", navigation).status_code == 200


def test_a_listing_through_the_queue_reads_titles_only_from_the_apps_own_origin(app, config):
    base, port, _, _ = app
    index = fn_index(config, "refresh_all")
    with httpx.Client(base_url=base, timeout=60, headers={"Origin": f"http://127.0.0.1:{port}"}) as own:
        listed = call_event(own, index, [None])
    assert listed["success"] is True and SEED_TITLE in str(listed["output"])
    with httpx.Client(base_url=base, timeout=60, headers={"Origin": f"http://localhost:{port + 1}"}) as foreign:
        refused = call_event(foreign, index, [None])
    assert refused["join"] == 403 and refused["output"] is None


def _uploads(data_dir) -> list:
    return sorted(p for p in (data_dir / "gradio").rglob("*") if p.is_file())


def test_uploads_land_in_the_data_dir_and_cross_origin_uploads_are_refused(app):
    base, port, data_dir, _ = app
    before = _uploads(data_dir)
    refused = _request(base, "POST", "/gradio_api/upload", {"Origin": f"http://127.0.0.1:{port + 1}"},
                       files={"files": ("evil.txt", b"cross-origin", "text/plain")})
    assert refused.status_code == 403
    assert _uploads(data_dir) == before
    accepted = _request(base, "POST", "/gradio_api/upload", {"Origin": f"http://127.0.0.1:{port}"},
                        files={"files": ("mine.txt", b"same-origin", "text/plain")})
    assert accepted.status_code == 200, accepted.text
    (path,) = accepted.json()
    assert str(path).startswith(str((data_dir / "gradio").resolve()))
    assert stat.S_IMODE((data_dir / "gradio").stat().st_mode) == 0o700


def test_a_request_over_the_total_upload_limit_gets_413(app):
    base, _, data_dir, _ = app
    before = _uploads(data_dir)
    # Two files, each under the 10 MB per-file limit, 18 MB together.
    files = [("files", ("a.txt", b"a" * (9 * MB), "text/plain")), ("files", ("b.txt", b"b" * (9 * MB), "text/plain"))]
    declared = _request(base, "POST", "/gradio_api/upload", {}, files=files)
    assert declared.status_code == 413
    assert "total upload limit of 16 MB" in declared.text

    def chunks():
        # No Content-Length: the body is streamed (chunked) and counted as it arrives.
        for _ in range(20):
            yield b"x" * MB

    streamed = _request(base, "POST", "/gradio_api/queue/join", {"Content-Type": "application/json"},
                        content=chunks())
    assert streamed.status_code == 413
    assert _uploads(data_dir) == before


def test_import_of_a_server_path_answers_with_a_message(app, config):
    base, port, data_dir, log = app
    index = fn_index(config, "import_novel")
    before = novel_titles(data_dir)
    tries = [
        [{"path": "/etc/passwd", "meta": {"_type": "gradio.FileData"}, "orig_name": "passwd.json"}],
        [{"path": str(data_dir / "longhand.db"), "meta": {"_type": "gradio.FileData"}}],
        ["/etc/passwd"],
    ]
    with httpx.Client(base_url=base, timeout=60) as client:
        for data in tries:
            result = call_event(client, index, data)
            assert result["join"] == 400, result
            assert "not a path on the server" in result["join_text"] or "a path on the server is not accepted" \
                in result["join_text"], result
        uploaded = client.post("/gradio_api/upload",
                               files={"files": ("novel.txt", b"First paragraph.\n\nSecond one.", "text/plain")})
        (path,) = uploaded.json()
        imported = call_event(client, index, [{"path": path, "meta": {"_type": "gradio.FileData"},
                                               "orig_name": "novel.txt"}])
    assert imported["success"] is True, imported
    assert "Imported" in str(imported["output"])
    assert "Traceback" not in log.read_text()
    assert len(novel_titles(data_dir)) == len(before) + 1


def test_the_served_data_dir_is_private(app):
    _, _, data_dir, _ = app
    # The data dir existed before the app started (the test seeded it), world-readable: serving tightened it.
    for folder in (data_dir, data_dir / "backups", data_dir / "exports", data_dir / "gradio"):
        assert stat.S_IMODE(folder.stat().st_mode) == 0o700, folder
    for name in ("longhand.db", "longhand.db-wal", "ui-secret"):
        assert stat.S_IMODE((data_dir / name).stat().st_mode) == 0o600, name
