"""End to end in real headless Chromium with the real app and default model: a novel's opening is written, the
first chapter is closed (so a second opens, and the model writes the first one's summary), the writer edits that
summary by hand, and the edit is found verbatim in the next step's context (Context tab). Screenshots go to
docs/screenshots/15-*.png."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from tests.ui.test_ui_browser import (  # noqa: F401 (fixtures)
    docs_shots,
    _create_novel,
    _open_tab,
    _textarea,
    _wait_saved,
    _wait_text,
    chromium,
    served_app,
    shots,
)

SUMMARY_EDIT = "Orla hides the bottle under the lamp and swears the ferryman Tam to silence."
DOCS = docs_shots()


def _shot(page, shots: Path, name: str) -> None:
    path = shots / f"15-{name}.png"
    page.screenshot(path=str(path), full_page=True)
    DOCS.mkdir(parents=True, exist_ok=True)
    shutil.copy(path, DOCS / path.name)


@pytest.mark.slow
@pytest.mark.browser
@pytest.mark.timeout(900)
def test_two_chapters_close_edit_summary_and_find_it_in_the_context(chromium, served_app, shots: Path):
    url, data_dir, log = served_app
    page = chromium.new_context(viewport={"width": 1280, "height": 1400}).new_page()
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    page.goto(url)
    page.wait_for_selector("#create_btn", timeout=60_000)
    _create_novel(page, "A lighthouse keeper finds a message in a bottle addressed to her.", paragraph_tokens=48)
    _wait_saved(page, shots, log, "opening")
    page.locator("#manuscript .lh-para").first.wait_for(timeout=30_000)
    _wait_text(page.locator("#chapters_table"), "open", 30_000)
    _shot(page, shots, "chapters-one-open")

    # Close chapter 1: a second chapter opens and the model writes the first one's summary and the synopsis.
    page.locator("#close_chapter_btn").click()
    _wait_text(page.locator("#chapters_status"), "Closed the chapter", 600_000)
    _wait_text(page.locator("#chapters_table"), "Chapter 2", 30_000)
    _shot(page, shots, "chapter-closed")

    # Pick chapter 1 and edit its summary by hand.
    page.locator("#chapter_pick input").first.click()
    page.get_by_role("option", name="1. Chapter 1").click()
    _wait_text(_textarea(page, "chapter_title"), "Chapter 1", 30_000)
    summary = _textarea(page, "summary_box")
    summary.fill(SUMMARY_EDIT)
    page.locator("#save_summary_btn").click()
    _wait_text(page.locator("#chapters_status"), "Saved the summary", 30_000)
    _shot(page, shots, "summary-edited")

    # The next step's context holds the edited summary verbatim, in its own section with its tokens.
    _open_tab(page, "Context")
    _wait_text(_textarea(page, "context_box"), SUMMARY_EDIT, 120_000)
    _wait_text(page.locator("#context_sections"), "chapters", 30_000)
    _shot(page, shots, "context-tiers")

    from memory import chapters, store
    from memory.db import make_engine, make_sessionmaker

    with make_sessionmaker(make_engine(f"sqlite:///{data_dir / 'longhand.db'}"))() as session:
        first, second = store.chapters(session, 1)
        assert first.closed and not second.closed
        assert chapters.current_summary(session, first.id).text == SUMMARY_EDIT
    assert not errors, f"the page raised JavaScript errors: {errors}"
    assert "Traceback" not in log.read_text(), log.read_text()[-3000:]
