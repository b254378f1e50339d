"""Real Chromium against the real app: a DNS-rebinding page and a page on another localhost port try to create,
open, rename, delete, list and export novels through Gradio's queue, upload a file and read the config, and must
change nothing and read nothing (asserted on the database afterwards and on every response Chromium saw).

Chromium resolves `evil.example` to 127.0.0.1 (`--host-resolver-rules`), as a rebinding DNS server would. The same
attack script, run from the app's own page, does list the titles: the script works, the guard stops it.
"""

from __future__ import annotations

import http.server
import json
import shutil
import threading
from pathlib import Path

import httpx
import pytest

from tests.conftest import require_or_skip
from tests.ui.security_helpers import SEED_TITLE, fn_index, free_port, novel_titles, served
from tests.ui.test_ui_browser import CHROMIUM, CHROMIUM_ARGS

pytestmark = [pytest.mark.slow, pytest.mark.browser, pytest.mark.timeout(600)]

EVIL_HOST = "evil.example"
ATTACK_JS = """
async ({base, calls}) => {
  const out = [];
  async function attempt(label, url, options) {
    try {
      const response = await fetch(url, {credentials: 'include', ...options});
      let text = '';
      try { text = await response.text(); } catch (e) { text = String(e); }
      out.push({label, status: response.status, type: response.type, text: text.slice(0, 2000)});
    } catch (error) {
      out.push({label, status: 0, type: 'error', text: String(error)});
    }
  }
  await attempt('config', base + '/config', {});
  await attempt('info', base + '/gradio_api/info', {});
  for (const [label, index, data] of calls) {
    const body = JSON.stringify({data, fn_index: index, trigger_id: null, session_hash: 'evil' + index,
                                 event_data: null});
    await attempt(label, base + '/gradio_api/queue/join',
                  {method: 'POST', headers: {'Content-Type': 'application/json'}, body});
    // The same as a "simple" request: no preflight, the browser sends it whatever CORS says.
    await attempt(label + ' (no-cors)', base + '/gradio_api/queue/join',
                  {method: 'POST', mode: 'no-cors', headers: {'Content-Type': 'text/plain'}, body});
    await attempt(label + ' (stream)', base + '/gradio_api/queue/data?session_hash=evil' + index, {});
  }
  const form = new FormData();
  form.append('files', new Blob(['{"title": "evil"}'], {type: 'application/json'}), 'evil.json');
  await attempt('upload', base + '/gradio_api/upload', {method: 'POST', body: form});
  await attempt('upload (no-cors)', base + '/gradio_api/upload', {method: 'POST', mode: 'no-cors', body: form});
  return out;
}
"""


class _EvilPage(http.server.BaseHTTPRequestHandler):
    def do_GET(self):  # noqa: N802 (http.server's name)
        body = b"<!doctype html><title>evil</title><p>nothing to see</p>"
        self.send_response(200)
        self.send_header("Content-Type", "text/html")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


@pytest.fixture
def evil_site():
    """A page on another port of this machine (reached as http://evil.example:<port> or http://127.0.0.1:<port>)."""
    port = free_port()
    server = http.server.ThreadingHTTPServer(("127.0.0.1", port), _EvilPage)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield port
    server.shutdown()
    server.server_close()


@pytest.fixture
def browser():
    require_or_skip(Path(CHROMIUM).exists() or shutil.which("chromium") is not None,
                    "Debian's chromium is not installed (tests/system_deps.sh installs it)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(
            executable_path=CHROMIUM, args=[*CHROMIUM_ARGS, f"--host-resolver-rules=MAP {EVIL_HOST} 127.0.0.1"])
        yield launched
        launched.close()


def _attack_calls(config: dict, seed_id: int) -> list:
    """Every event the attack tries, with the fn_index the app's own config gives it (the strongest attack)."""
    return [
        ["create", fn_index(config, "create_novel"), ["Evil premise", "", "", "default"]],
        ["open", fn_index(config, "open_novel"), [seed_id]],
        ["rename", fn_index(config, "rename_novel"), [seed_id, "Pwned"]],
        ["delete", fn_index(config, "delete_novel"), [seed_id, True]],
        ["list", fn_index(config, "refresh_all"), [seed_id]],
        ["export", fn_index(config, "export_novel"), [seed_id, "JSON"]],
    ]


def _watch(page, app_port: int) -> list:
    """Every response Chromium received from the app's port, whatever the page could see of it."""
    seen = []
    page.on("response", lambda response: seen.append((response.request.method, response.url, response.status))
            if f":{app_port}/" in response.url else None)
    return seen


def _assert_refused(results: list, seen: list, data_dir: Path, before: list) -> None:
    assert results, "the attack script did not run"
    for result in results:
        assert SEED_TITLE not in result["text"], result
        assert "dependencies" not in result["text"], result
        # Readable answers are refusals; the rest the browser hid (no-cors) or blocked (CORS).
        assert result["status"] in (0, 403), result
    reached = [entry for entry in seen if entry[0] != "OPTIONS"]
    assert reached, "no request reached the app"
    assert all(status == 403 for _, _, status in reached), reached
    assert novel_titles(data_dir) == before
    exports = data_dir / "exports"
    assert not exports.exists() or not any(exports.iterdir())


def test_dns_rebinding_page_changes_nothing_and_reads_nothing(browser, evil_site, tmp_path: Path):
    with served(tmp_path) as (base, app_port, data_dir, log):
        before = novel_titles(data_dir)
        calls = _attack_calls(httpx.get(f"{base}/config", timeout=30).json(), seed_id=1)
        context = browser.new_context()
        page = context.new_page()
        seen = _watch(page, app_port)

        # Rebound to the app's own port, the page would be same-origin with the app: Host alone decides.
        rebound = f"http://{EVIL_HOST}:{app_port}"
        answer = page.goto(f"{rebound}/")
        assert answer.status == 403 and "is not this app's address" in page.content()
        same_origin = page.evaluate(ATTACK_JS, {"base": rebound, "calls": calls})
        assert all(result["status"] == 403 for result in same_origin), same_origin

        # From the attacker's own port, at the rebound name and at 127.0.0.1.
        page.goto(f"http://{EVIL_HOST}:{evil_site}/")
        cross = page.evaluate(ATTACK_JS, {"base": rebound, "calls": calls})
        cross += page.evaluate(ATTACK_JS, {"base": f"http://127.0.0.1:{app_port}", "calls": calls})
        _assert_refused(same_origin + cross, seen, data_dir, before)

        # The same script from the app's own page reads the titles: it is the guard that stopped it above.
        own = context.new_page()
        own.goto(f"{base}/")
        listed = own.evaluate(ATTACK_JS, {"base": base, "calls": [c for c in calls if c[0] == "list"]})
        assert any(r["label"] == "list (stream)" and SEED_TITLE in r["text"] for r in listed), listed
        context.close()
        assert "Traceback" not in log.read_text()


def test_page_on_another_port_cannot_use_a_logged_in_session(browser, evil_site, tmp_path: Path):
    with served(tmp_path, "--auth", "writer:s3cret-pass") as (base, app_port, data_dir, _):
        before = novel_titles(data_dir)
        context = browser.new_context()
        page = context.new_page()
        page.goto(f"{base}/")
        logged_in = page.evaluate("""async () => {
            const form = new URLSearchParams({username: 'writer', password: 's3cret-pass'});
            const response = await fetch('/login', {method: 'POST', body: form});
            const config = await fetch('/config');
            return [response.status, config.status, (await config.text()).includes('dependencies')];
        }""")
        assert logged_in == [200, 200, True], logged_in
        config = json.loads(page.evaluate("async () => (await fetch('/config')).text()"))
        calls = _attack_calls(config, seed_id=1)
        # With the login cookie in the browser, the app's own page can list the titles...
        listed = page.evaluate(ATTACK_JS, {"base": base, "calls": [c for c in calls if c[0] == "list"]})
        assert any(r["label"] == "list (stream)" and SEED_TITLE in r["text"] for r in listed), listed

        # ...and a page on another port of the same host (the same "site" to the cookie) cannot.
        evil = context.new_page()
        seen = _watch(evil, app_port)
        evil.goto(f"http://127.0.0.1:{evil_site}/")
        results = evil.evaluate(ATTACK_JS, {"base": base, "calls": calls})
        _assert_refused(results, seen, data_dir, before)
        context.close()


def test_the_apps_own_page_still_imports_and_exports_through_the_guard(browser, tmp_path: Path):
    manuscript = tmp_path / "harbour.md"
    manuscript.write_text("# Harbour Lights\n\nThe tide came in twice that night.\n\nNobody counted the boats.\n")
    with served(tmp_path) as (base, app_port, data_dir, log):
        before = novel_titles(data_dir)
        page = browser.new_page()
        seen = _watch(page, app_port)
        page.goto(f"{base}/")
        page.get_by_text("Import and export", exact=True).click()
        page.locator("#import_file input[type=file]").set_input_files(str(manuscript))
        page.locator("#import_btn").click()
        page.locator("#library_status", has_text="Imported").wait_for(timeout=60_000)
        assert len(novel_titles(data_dir)) == len(before) + 1
        page.locator("#export_btn").click()
        try:
            page.locator("#library_status", has_text="Exported to").wait_for(timeout=60_000)
            page.locator("#export_file a[href]").first.wait_for(timeout=30_000)
        except Exception:
            page.screenshot(path=str(tmp_path / "export.png"), full_page=True)
            raise AssertionError(page.locator("#export_file").inner_html()[:3000]
                                 + page.locator("#library_status").inner_text() + log.read_text()[-3000:])
        link = page.locator("#export_file a[href]").first.get_attribute("href")
        downloaded = page.evaluate("async (url) => { const r = await fetch(url); return [r.status, await r.text()]; }",
                                   link)
        assert downloaded[0] == 200 and "Nobody counted the boats." in downloaded[1]
        assert not [entry for entry in seen if entry[2] in (400, 403, 413)], seen
        page.close()
        assert "Traceback" not in log.read_text()
