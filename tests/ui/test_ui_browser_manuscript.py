"""The manuscript editor in real headless Chromium against the served app (issue 14): choose a paragraph by a click,
insert one of your own between two (positions and retrieval checked in the database), edit one in place with the
word count following the typing, a stale tab refused, delete and undo; and, with the real default model, type your
own paragraph, see it verbatim in the next step's context, and let the model continue with Ctrl+Enter. In a long
chapter: an insert brings the new paragraph into view, a paragraph with versions kept carries a badge, unsaved
typing survives choosing another paragraph, and the Memory and Reader tabs show an edit when opened.

Screenshots go to docs/screenshots/14-*.png.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from memory import alternatives, retrieval, store
from memory.db import open_database
from tests.ui.test_ui_browser import (  # noqa: F401 (fixtures)
    docs_shots,
    _open_tab,
    _textarea,
    _wait_saved,
    _wait_text,
    chromium,
    served_app,
)

SHOTS = docs_shots()
SEED = ["The ferry left Skerry harbour at midnight with no lights showing.",
        "Orla stood at the rail and counted the buoys as they passed.",
        "By two in the morning the fog had closed over the water."]
TYPED_INSTRUCTION = "Orla signals the lighthouse with her torch, three short and one long."
MINE = "Orla hid the green bottle under the third stair of the lighthouse, where only her father had ever looked."


def _seed(data_dir: Path, embedder, texts: list[str]) -> tuple[object, int]:
    _, session_factory = open_database(f"sqlite:///{data_dir / 'longhand.db'}")
    with session_factory() as session, session.begin():
        novel_id = store.create_novel(session, "Ferry at night", premise="A ferry pilot finds her own name on a "
                                      "passenger list from 1952.").id
        for text in texts:
            store.add_paragraph(session, novel_id, text, origin="generated", embedding=embedder.passage(text))
    return session_factory, novel_id


def _open_novel(page, url: str, novel_id: int) -> None:
    page.goto(url)
    # The page load's redraw lands before anything is typed (it would reset the fields otherwise).
    page.locator("#novels_table").get_by_text("Ferry at night").first.wait_for(state="attached", timeout=60_000)
    page.locator("#novel_dropdown input").first.click()
    page.get_by_role("option", name=f"Ferry at night (#{novel_id})").click()
    page.locator("#open_btn").click()
    _wait_text(page.locator("#header"), f"novel #{novel_id}", 30_000)
    _open_tab(page, "Write")


def _long_chapter(count: int) -> list[str]:
    """`count` paragraphs of about 40 words: more than the manuscript's box shows at once."""
    return [f"Night {number}: the ferry crossed the sound in the grey before dawn, and Orla kept her hands in her "
            f"coat while the engine knocked below like a heart that had missed a beat, and the gulls followed the "
            f"wake and fell away one by one." for number in range(1, count + 1)]


# Whether paragraph `position` is inside both the manuscript's scrolling box and the window.
IN_VIEW = """(position) => {
  const box = document.querySelector('#manuscript .lh-manuscript');
  const paragraph = box.querySelector(`.lh-para[data-position="${position}"]`);
  if (!paragraph) return false;
  const outer = box.getBoundingClientRect(), rect = paragraph.getBoundingClientRect();
  return rect.top >= outer.top - 1 && rect.bottom <= outer.bottom + 1 && rect.top >= -1
      && rect.bottom <= window.innerHeight + 1;
}"""


def _wait_in_view(page, position: int, timeout_s: float = 15) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if page.evaluate(IN_VIEW, position):
            return
        time.sleep(0.1)
    raise AssertionError(f"paragraph {position} is not in view")


def _paragraph_texts(page) -> list[str]:
    texts = page.locator("#manuscript .lh-para").evaluate_all(
        "paragraphs => paragraphs.map(p => Array.from(p.childNodes).filter(n => n.nodeType === 3)"
        ".map(n => n.textContent).join('').trim())")
    return texts


def _wait_paragraphs(page, expected: list[str], timeout_s: float = 30) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if _paragraph_texts(page) == expected:
            return
        time.sleep(0.1)
    raise AssertionError(f"the manuscript shows {_paragraph_texts(page)}, not {expected}")


def _saved(session_factory, novel_id: int) -> list[tuple[int, str, str]]:
    with session_factory() as session:
        return [(p.position, p.text, p.origin) for p in store.paragraphs(session, novel_id)]


def _shot(page, name: str) -> None:
    SHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SHOTS / f"14-{name}.png"), full_page=True)


@pytest.mark.browser
@pytest.mark.timeout(420)
def test_insert_between_edit_in_place_stale_tab_delete_and_undo(chromium, served_app, embedder):  # noqa: F811
    url, data_dir, log = served_app
    session_factory, novel_id = _seed(data_dir, embedder, SEED)
    profile = chromium.new_context(viewport={"width": 1280, "height": 1400})
    page = profile.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    _open_novel(page, url, novel_id)
    _wait_paragraphs(page, SEED)

    # A click on paragraph 1 chooses it; the writer's paragraph goes in after it.
    page.locator("#manuscript .lh-para").nth(0).click()
    _wait_text(_textarea(page, "para_box"), SEED[0], 15_000)
    _textarea(page, "new_paragraph_box").fill(MINE)
    _wait_text(page.locator("#new_words_md"), "19 words", 10_000)
    page.locator("#insert_after_btn").click()
    _wait_paragraphs(page, [SEED[0], MINE, *SEED[1:]])
    _wait_text(page.locator("#counts_md"), "4 paragraphs", 15_000)
    assert page.locator("#manuscript .lh-para.lh-written").count() == 1
    _shot(page, "insert-between")
    assert _saved(session_factory, novel_id) == [(1, SEED[0], "generated"), (2, MINE, "written"),
                                                 (3, SEED[1], "generated"), (4, SEED[2], "generated")]
    with session_factory() as session:
        hits = retrieval.search(session, novel_id, embedder.vector("Where is the green bottle hidden?"), 1,
                                text="Where is the green bottle hidden?")
        assert hits[0].paragraph.text == MINE and hits[0].paragraph.position == 2

    # Edit paragraph 4 in place: the word count follows the typing, Save keeps it. The instruction the writer is
    # typing for the next step survives the Write tab's redraw after the save.
    _textarea(page, "instruction_box").fill(TYPED_INSTRUCTION)
    number = page.locator("#para_number input").first
    number.fill("4")
    number.press("Enter")
    box = _textarea(page, "para_box")
    _wait_text(box, SEED[2], 15_000)
    box.fill("By two in the morning the fog had closed over the water, and the foghorn began.")
    _wait_text(page.locator("#para_words_md"), "16 words", 10_000)
    page.locator("#para_save_btn").click()
    _wait_text(page.locator("#edit_status"), "Saved paragraph 4", 30_000)
    _wait_text(page.locator("#manuscript"), "the foghorn began", 15_000)
    page.wait_for_timeout(1000)
    assert _textarea(page, "instruction_box").input_value() == TYPED_INSTRUCTION
    _shot(page, "edit-in-place")

    # A second tab saves paragraph 1; the first, still showing the old version, is refused.
    page.locator("#manuscript .lh-para").nth(0).click()
    _wait_text(_textarea(page, "para_box"), SEED[0], 15_000)
    second = profile.new_page()
    second.goto(url)
    _wait_text(second.locator("#header"), f"novel #{novel_id}", 60_000)
    _open_tab(second, "Write")
    second.locator("#manuscript .lh-para").nth(0).click()
    _wait_text(_textarea(second, "para_box"), SEED[0], 15_000)
    _textarea(second, "para_box").fill("Saved from the second tab.")
    second.locator("#para_save_btn").click()
    _wait_text(second.locator("#edit_status"), "Saved paragraph 1", 30_000)
    page.bring_to_front()
    _textarea(page, "para_box").fill("Saved from the first tab, which is stale.")
    page.locator("#para_save_btn").click()
    error = page.locator('[data-testid="toast-body"].error')
    error.first.wait_for(timeout=30_000)
    assert "changed elsewhere" in error.first.inner_text()
    page.wait_for_timeout(500)
    _shot(page, "stale-edit-refused")
    assert _saved(session_factory, novel_id)[0][1] == "Saved from the second tab."

    # Delete paragraph 2 (the writer's), then Undo brings it back in its place.
    page.reload()
    _wait_text(page.locator("#header"), f"novel #{novel_id}", 60_000)
    _open_tab(page, "Write")
    page.locator("#manuscript .lh-para").nth(1).click()
    _wait_text(_textarea(page, "para_box"), MINE, 15_000)
    page.locator("#para_delete_btn").click()
    _wait_text(page.locator("#edit_status"), "Deleted paragraph 2", 30_000)
    _wait_text(page.locator("#counts_md"), "3 paragraphs", 15_000)
    assert MINE not in [text for _, text, _ in _saved(session_factory, novel_id)]
    _shot(page, "deleted")
    page.locator("#undo_btn").click()
    _wait_text(page.locator("#write_status"), "Undone", 30_000)
    _wait_text(page.locator("#counts_md"), "4 paragraphs", 15_000)
    assert _saved(session_factory, novel_id)[1] == (2, MINE, "written")
    _shot(page, "delete-undone")

    # New plans (here written by another client) do replace the instruction, once the tab is drawn again.
    with session_factory() as session, session.begin():
        store.set_plans(session, novel_id, ["Orla rings the harbour bell.", "Orla waits.", "Orla sleeps."])
    _open_tab(page, "Memory")
    _open_tab(page, "Write")
    _wait_text(_textarea(page, "instruction_box"), "Orla rings the harbour bell.", 30_000)
    assert not errors, f"the page raised JavaScript errors: {errors}"
    assert "Traceback" not in log.read_text(), log.read_text()[-3000:]


@pytest.mark.slow
@pytest.mark.browser
@pytest.mark.timeout(600)
def test_type_your_own_paragraph_and_the_real_model_continues_from_it(chromium, served_app, embedder,  # noqa: F811
                                                                      tmp_path: Path):
    url, data_dir, log = served_app
    session_factory, novel_id = _seed(data_dir, embedder, SEED[:1])
    with session_factory() as session, session.begin():
        store.update_novel_settings(session, novel_id, {"max_new_tokens": 48})
    page = chromium.new_context(viewport={"width": 1280, "height": 1400}).new_page()
    _open_novel(page, url, novel_id)
    _wait_paragraphs(page, SEED[:1])

    _textarea(page, "new_paragraph_box").fill(MINE)
    page.locator("#add_end_btn").click()
    _wait_paragraphs(page, [SEED[0], MINE])
    instruction = "Orla climbs the lighthouse stair to check on the bottle."
    _textarea(page, "instruction_box").fill(instruction)
    # The next step's context, as the Context tab shows it, holds the writer's paragraph verbatim.
    _open_tab(page, "Context")
    _wait_text(_textarea(page, "context_box"), MINE, 120_000)
    _shot(page, "own-paragraph-in-context")

    _open_tab(page, "Write")
    _textarea(page, "instruction_box").press("Control+Enter")
    _wait_saved(page, tmp_path, log, "continue")
    page.locator("#manuscript .lh-para").nth(2).wait_for(timeout=30_000)
    saved = _saved(session_factory, novel_id)
    assert [origin for _, _, origin in saved] == ["generated", "written", "generated"]
    assert saved[2][1] and saved[2][1] != MINE
    _shot(page, "own-paragraph-continued")
    # The step's memory caught up with the writer's paragraph: Update memory now has nothing left to read.
    page.locator("#update_memory_btn").click()
    _wait_text(page.locator("#write_status"), "up to date", 60_000)
    assert "Traceback" not in log.read_text(), log.read_text()[-3000:]


@pytest.mark.browser
@pytest.mark.timeout(480)
def test_a_long_chapter_scrolls_to_the_new_paragraph_marks_versions_keeps_unsaved_typing_and_other_tabs_follow(
        chromium, served_app, embedder):  # noqa: F811
    url, data_dir, log = served_app
    chapter = _long_chapter(40)
    session_factory, novel_id = _seed(data_dir, embedder, chapter)
    with session_factory() as session, session.begin():
        third = store.paragraph_at(session, novel_id, 3).id
        alternatives.keep(session, third, alternatives.Version(text="Night 3, told another way.", kind="version"))
    page = chromium.new_context(viewport={"width": 1280, "height": 1400}).new_page()
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    _open_novel(page, url, novel_id)
    _wait_paragraphs(page, chapter)
    box = "document.querySelector('#manuscript .lh-manuscript')"
    assert page.evaluate(f"{box}.scrollHeight > {box}.clientHeight + 200"), "the chapter fits without scrolling"

    # The paragraph with another version kept carries a badge; no other paragraph does.
    badges = page.locator("#manuscript .lh-para .lh-badge")
    assert badges.count() == 1 and badges.first.inner_text() == "2 versions"
    assert page.locator("#manuscript .lh-para").nth(2).locator(".lh-badge").count() == 1
    _shot(page, "versions-badge")

    # An insert after paragraph 30, with the manuscript scrolled to its top: the new paragraph 31 comes into view.
    number = page.locator("#para_number input").first
    number.fill("30")
    number.press("Enter")
    _wait_text(_textarea(page, "para_box"), "Night 30:", 15_000)
    page.evaluate(f"{box}.scrollTop = 0")
    assert not page.evaluate(IN_VIEW, 31)
    _textarea(page, "new_paragraph_box").fill(MINE)
    page.locator("#insert_after_btn").click()
    _wait_text(page.locator("#edit_status"), "31", 30_000)
    _wait_paragraphs(page, [*chapter[:30], MINE, *chapter[30:]])
    _wait_in_view(page, 31)
    assert page.locator("#manuscript .lh-para[data-position='31']").inner_text().endswith(MINE)
    # Add at end, scrolled to the top again: the new last paragraph comes into view.
    page.evaluate(f"{box}.scrollTop = 0")
    _textarea(page, "new_paragraph_box").fill("The last light of Skerry went out behind them.")
    page.locator("#add_end_btn").click()
    _wait_text(page.locator("#counts_md"), "42 paragraphs", 30_000)
    _wait_in_view(page, 42)
    _shot(page, "scroll-to-new")

    # Unsaved typing in paragraph 5: a click on paragraph 6 warns and keeps it; Discard changes lets go of it.
    page.evaluate(f"{box}.scrollTop = 0")
    page.locator("#manuscript .lh-para").nth(4).click()
    editor = _textarea(page, "para_box")
    _wait_text(editor, "Night 5:", 15_000)
    editor.fill("Night 5, rewritten by hand and not saved yet.")
    page.locator("#manuscript .lh-para").nth(5).click()
    warning = page.locator('[data-testid="toast-body"]').filter(has_text="not saved")
    warning.first.wait_for(timeout=15_000)
    page.wait_for_timeout(500)
    assert editor.input_value() == "Night 5, rewritten by hand and not saved yet."
    assert number.input_value() == "5"
    _shot(page, "unsaved-warning")
    page.locator("#para_discard_btn").click()
    _wait_text(editor, "Night 5: the ferry", 15_000)
    page.locator("#manuscript .lh-para").nth(5).click()
    _wait_text(editor, "Night 6:", 15_000)

    # An edit saved in the Write tab shows in the Memory and Reader tabs when they are opened.
    editor.fill("Night 6: the foghorn sounded twice from the headland.")
    page.locator("#para_save_btn").click()
    _wait_text(page.locator("#edit_status"), "Saved paragraph 6", 30_000)
    _open_tab(page, "Memory")
    page.get_by_text("Long-term memory: every paragraph").click()
    _wait_text(page.locator("#paragraph_table"), "the foghorn sounded twice", 30_000)
    _open_tab(page, "Reader")
    _wait_text(page.locator("#reader_story"), "the foghorn sounded twice", 30_000)
    _open_tab(page, "Library")
    _open_tab(page, "Write")
    _wait_text(page.locator("#manuscript"), "the foghorn sounded twice", 15_000)
    assert not errors, f"the page raised JavaScript errors: {errors}"
    assert "Traceback" not in log.read_text(), log.read_text()[-3000:]
