"""In real headless Chromium against the served app (no generation, so no model is loaded): the Settings tab saves
through its by-name wiring and refuses a remote model server, the Write tab names where the text goes, and a novel
deleted from the Library comes back from the trash."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from memory import store
from memory.db import open_database
from tests.ui.test_ui_browser import _open_tab, _wait_text, chromium, served_app  # noqa: F401 (fixtures)


def _pick(page, elem_id: str, option: str) -> None:
    page.locator(f"#{elem_id} input").first.click()
    page.get_by_role("option", name=option).first.click()


@pytest.mark.browser
@pytest.mark.timeout(300)
def test_settings_server_line_delete_and_restore_in_the_browser(chromium, served_app, tmp_path: Path):  # noqa: F811
    url, data_dir, log = served_app
    _, session_factory = open_database(f"sqlite:///{data_dir / 'longhand.db'}")
    with session_factory() as session, session.begin():
        novel_id = store.create_novel(session, "Ferry at night", premise="A ferry crosses at night.").id
        store.add_paragraph(session, novel_id, "The ferry left at midnight.")
    page = chromium.new_page()
    page.goto(url)
    # The page load's redraw of every tab (it lists the novel) must land before a field is typed into, or it
    # resets the field to the saved value (seen under load: the save then wrote the default 250).
    page.locator("#novels_table").get_by_text("Ferry at night").first.wait_for(state="attached", timeout=60_000)

    # Settings with no novel open: a changed field is saved by name as what new novels start with.
    _open_tab(page, "Settings")
    length = page.locator("#setting_max_new_tokens input[type=number]").first
    length.fill("77")
    length.press("Enter")
    page.locator("#save_settings_btn").click()
    _wait_text(page.locator("#settings_status"), "new novels start with", 30_000)
    saved = json.loads((data_dir / "new-novel-settings.json").read_text(encoding="utf-8"))
    assert saved["max_new_tokens"] == 77

    # Open the novel: the Write tab says where its text goes.
    _open_tab(page, "Library")
    page.locator("#novel_dropdown input").first.click()
    page.get_by_role("option", name=f"Ferry at night (#{novel_id})").click()
    page.locator("#open_btn").click()
    _open_tab(page, "Write")
    _wait_text(page.locator("#receiver_md"), "Text stays on this machine", 30_000)

    # A remote server is refused with one line, and nothing is saved.
    _open_tab(page, "Settings")
    model = page.locator("#setting_model input").first
    model.fill("http://evil.example:8000/v1")
    model.press("Enter")
    page.locator("#save_settings_btn").click()
    toast = page.locator('[data-testid="toast-body"]').filter(has_text="Refused the model server evil.example")
    toast.first.wait_for(timeout=30_000)
    with session_factory() as session:
        assert store.get_novel(session, novel_id).settings.get("model", "default") == "default"

    # Delete (ticked), then restore from the trash.
    _open_tab(page, "Library")
    page.get_by_text("Rename or delete").click()
    page.locator("#delete_confirm input").check()
    page.locator("#delete_btn").click()
    _wait_text(page.locator("#library_status"), "to the trash", 30_000)
    with session_factory() as session:
        assert store.list_novels(session) == []
    page.get_by_text("Trash", exact=True).click()
    page.locator("#restore_trash_btn").click()
    _wait_text(page.locator("#library_status"), "Restored", 30_000)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        with session_factory() as session:
            novels = store.list_novels(session)
        if novels:
            break
        time.sleep(0.2)
    [restored] = novels
    assert restored.title == "Ferry at night" and restored.paragraphs == 1
