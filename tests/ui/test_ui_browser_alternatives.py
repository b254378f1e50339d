"""In real headless Chromium against the served app and the real default model: a novel whose steps write two
versions; the second is picked in the Versions panel, the page reloaded and both found; then the paragraph is
rewritten with an instruction (streamed) and the original swapped back in. Screenshots: docs/screenshots/14-*.png."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from memory import alternatives, store
from memory.db import make_engine, make_sessionmaker
from tests.ui.test_ui_browser import (  # noqa: F401 (fixtures)
    docs_shots,
    _open_tab,
    _textarea,
    _wait_saved,
    _wait_text,
    chromium,
    served_app,
    shots,
)

SCREENSHOTS = docs_shots()


def _manuscript_and_kept(data_dir: Path) -> tuple[list[str], list[str]]:
    """Paragraph 1's text and the texts kept beside it, read from the served app's database."""
    engine = make_engine(f"sqlite:///{data_dir / 'longhand.db'}")
    try:
        with make_sessionmaker(engine)() as session:
            paragraphs = store.paragraphs(session, 1)
            kept = [a.text for a in alternatives.of_paragraph(session, paragraphs[0].id)]
            return [p.text for p in paragraphs], kept
    finally:
        engine.dispose()


def _choices(page) -> list[str]:
    return [label.inner_text() for label in page.locator("#versions_radio label").all()]


def _wait_choices(page, count: int, timeout_s: float = 60) -> list[str]:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        found = _choices(page)
        if len(found) == count:
            return found
        time.sleep(0.2)
    raise AssertionError(f"the Versions panel did not list {count} versions: {_choices(page)}")


def _snippet(text: str) -> str:
    return " ".join(text.split())[:40]


def _fail_on_error(page, log: Path) -> None:
    toasts = page.locator('[data-testid="toast-body"].error')
    if toasts.count():
        pytest.fail(f"the page showed an error: {toasts.first.inner_text()}\n{log.read_text()[-3000:]}")


def _wait_status(page, needle: str, log: Path, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if needle in page.locator("#versions_status").inner_text():
            return
        _fail_on_error(page, log)
        time.sleep(0.2)
    pytest.fail(f"{needle!r} did not appear in the Versions status within {timeout_s:.0f}s\n{log.read_text()[-3000:]}")


@pytest.mark.slow
@pytest.mark.browser
@pytest.mark.timeout(1200)
def test_two_versions_pick_reload_then_rewrite_and_swap_back(chromium, served_app, shots: Path):  # noqa: F811
    url, data_dir, log = served_app
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    page = chromium.new_context(viewport={"width": 1280, "height": 1600}).new_page()
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    page.goto(url)
    page.wait_for_selector("#create_btn", timeout=60_000)
    page.wait_for_timeout(1500)  # the page load's redraw lands before anything is typed

    # New novels write two versions per step, with short paragraphs (they keep the test quick).
    _open_tab(page, "Settings")
    for field, value in (("max_new_tokens", "48"), ("candidates", "2")):
        box = page.locator(f"#setting_{field} input[type=number]").first
        box.fill(value)
        box.press("Enter")
    page.locator("#save_settings_btn").click()
    _wait_text(page.locator("#settings_status"), "new novels start with", 30_000)
    _open_tab(page, "Library")
    _textarea(page, "premise_box").fill("A lighthouse keeper finds a message in a bottle addressed to her.")
    page.locator("#create_btn").click()
    _wait_saved(page, shots, log, "opening", timeout_s=600)

    # Two versions of the opening: the one in the manuscript and one kept beside it.
    labels = _wait_choices(page, 2)
    manuscript, kept = _manuscript_and_kept(data_dir)
    assert len(manuscript) == 1 and len(kept) == 1
    first, second = manuscript[0], kept[0]
    assert labels[0].startswith("In the manuscript") and _snippet(second) in " ".join(labels[1].split())
    page.locator("#versions_panel").scroll_into_view_if_needed()
    page.screenshot(path=str(SCREENSHOTS / "14-versions-two.png"), full_page=True)

    # Pick the second.
    page.locator("#versions_radio label").nth(1).click()
    _wait_text(page.locator("#version_text"), _snippet(second)[:20], 30_000)
    page.locator("#use_version_btn").click()
    _wait_status(page, "now reads the chosen version", log, 60)
    assert _manuscript_and_kept(data_dir) == ([second], [first])

    # Reload: both are there, the picked one in the manuscript.
    page.reload()
    _wait_text(page.locator("#header"), "novel #", 60_000)
    _open_tab(page, "Write")
    labels = _wait_choices(page, 2)
    assert _snippet(second) in " ".join(labels[0].split()) and _snippet(first) in " ".join(labels[1].split())
    _wait_text(page.locator("#manuscript"), _snippet(second)[:20], 30_000)
    page.screenshot(path=str(SCREENSHOTS / "14-versions-picked-after-reload.png"), full_page=True)

    # Rewrite it with an instruction: streamed, swapped in, the original kept beside it.
    instruction = page.locator("#rewrite_instruction input").first
    instruction.fill("half as long")
    instruction.press("Enter")
    page.locator("#rewrite_btn").click()
    draft = _textarea(page, "versions_draft")
    deadline = time.monotonic() + 600
    lengths: list[int] = []
    while "Rewrote paragraph 1" not in page.locator("#versions_status").inner_text():
        if time.monotonic() > deadline:
            pytest.fail(f"the rewrite did not finish; lengths seen {lengths}\n{log.read_text()[-3000:]}")
        _fail_on_error(page, log)
        text = draft.input_value()
        if text and (not lengths or len(text) != lengths[-1]):
            lengths.append(len(text))
            if len(lengths) == 3:
                page.screenshot(path=str(SCREENSHOTS / "14-rewrite-streaming.png"), full_page=True)
        time.sleep(0.1)
    assert len(lengths) >= 2, f"the rewrite did not stream (lengths seen: {lengths})"
    manuscript, kept = _manuscript_and_kept(data_dir)
    rewritten = manuscript[0]
    assert rewritten not in (first, second) and set(kept) == {first, second}
    labels = _wait_choices(page, 3)
    page.screenshot(path=str(SCREENSHOTS / "14-rewrite-done.png"), full_page=True)

    # The original (the version in the manuscript before the rewrite) is one click away.
    original = next(i for i, label in enumerate(labels) if _snippet(second) in " ".join(label.split()))
    page.locator("#versions_radio label").nth(original).click()
    _wait_text(page.locator("#version_text"), _snippet(second)[:20], 30_000)
    page.locator("#use_version_btn").click()
    _wait_status(page, "now reads the chosen version", log, 60)
    manuscript, kept = _manuscript_and_kept(data_dir)
    assert manuscript == [second] and set(kept) == {first, rewritten}
    _wait_text(page.locator("#manuscript"), _snippet(second)[:20], 30_000)
    page.screenshot(path=str(SCREENSHOTS / "14-rewrite-swapped-back.png"), full_page=True)
    assert not errors, f"the page raised JavaScript errors: {errors}"
    assert "Traceback" not in log.read_text(), log.read_text()[-3000:]


@pytest.mark.browser
@pytest.mark.timeout(300)
def test_a_pending_version_is_applied_in_the_browser(chromium, served_app):  # noqa: F811
    """A step the store refused waits as a pending version (no generation here, so no model loads)."""
    from memory.alternatives import Version
    from memory.db import open_database

    url, data_dir, log = served_app
    engine, session_factory = open_database(f"sqlite:///{data_dir / 'longhand.db'}")
    with session_factory() as session, session.begin():
        novel_id = store.create_novel(session, "Ferry at night", premise="A ferry crosses at night.").id
        store.add_paragraph(session, novel_id, "The ferry left at midnight.")
        store.add_paragraph(session, novel_id, "Another tab wrote this meanwhile.")
        alternatives.keep_pending(session, novel_id, 2, [Version("The captain counted the passengers twice.",
                                                                 "candidate")])
    engine.dispose()
    page = chromium.new_context(viewport={"width": 1280, "height": 1600}).new_page()
    page.goto(url)
    page.locator("#novels_table").get_by_text("Ferry at night").first.wait_for(state="attached", timeout=60_000)
    page.locator("#novel_dropdown input").first.click()
    page.get_by_role("option", name=f"Ferry at night (#{novel_id})").click()
    page.locator("#open_btn").click()
    _wait_text(page.locator("#header"), "novel #", 60_000)
    _open_tab(page, "Write")
    page.locator("#pending_radio label").first.wait_for(timeout=30_000)
    assert "For position 2: The captain counted" in page.locator("#pending_radio").inner_text()
    page.locator("#pending_radio label").first.click()
    page.locator("#versions_panel").scroll_into_view_if_needed()
    page.screenshot(path=str(SCREENSHOTS / "14-pending-version.png"), full_page=True)
    page.locator("#apply_pending_btn").click()
    _wait_status(page, "Applied as paragraph 2", log, 60)
    _wait_text(page.locator("#manuscript"), "The captain counted the passengers twice.", 30_000)
    manuscript, _ = _manuscript_and_kept(data_dir)
    assert manuscript == ["The ferry left at midnight.", "The captain counted the passengers twice.",
                          "Another tab wrote this meanwhile."]
    assert not page.locator("#pending_radio").is_visible()
