"""In real headless Chromium against the served app (no generation, so no model is loaded): the Story chart shows the
continuity of a novel per paragraph (names carried over from the paragraph before, the voice), and names the
paragraphs where the story broke: one that restarts with a stranger, one in the first person."""

from __future__ import annotations

from pathlib import Path

import pytest

from memory import store
from memory.db import open_database
from tests.ui.test_ui_browser import _open_tab, _wait_text, chromium, served_app, shots  # noqa: F401 (fixtures)

PARAGRAPHS = [
    "Mara kept the lighthouse on Skerry alone. Every morning she walked the shore below the cliff and counted the "
    "gulls. One grey morning a green bottle lay in the weed, and inside it was a note in her own hand.",
    "Mara climbed the spiral stair of the Skerry light with the note in her fist. The lamp room smelled of paraffin "
    "and salt. She read the words again: do not light the lamp tonight.",
    "In 2017, a woman named Julia opened a bakery in Paris. Her bread was famous across France, and people came "
    "from far away to taste it.",
    "Julia closed the bakery early that evening. She took the last train to the coast and asked the ferryman "
    "about an island with a lighthouse, and a keeper named Mara.",
    "I rowed out to Skerry at dusk with Julia beside me. My hands were cold on the oars and I could see the dark "
    "lamp above us.",
]


@pytest.mark.browser
@pytest.mark.timeout(300)
def test_story_chart_shows_carry_over_and_voice_per_paragraph(chromium, served_app, shots: Path):  # noqa: F811
    url, data_dir, log = served_app
    _, session_factory = open_database(f"sqlite:///{data_dir / 'longhand.db'}")
    with session_factory() as session, session.begin():
        novel_id = store.create_novel(session, "The Keeper of Skerry", premise="A keeper finds a note.").id
        for text in PARAGRAPHS:
            store.add_paragraph(session, novel_id, text)
    page = chromium.new_page()
    page.set_viewport_size({"width": 1280, "height": 1000})
    page.goto(url)
    page.locator("#novels_table").get_by_text("The Keeper of Skerry").first.wait_for(state="attached",
                                                                                     timeout=60_000)
    page.locator("#novel_dropdown input").first.click()
    page.get_by_role("option", name=f"The Keeper of Skerry (#{novel_id})").click()
    page.locator("#open_btn").click()
    _open_tab(page, "Story chart")
    page.locator("#refresh_chart_btn").click()
    summary = page.locator("#chart_summary")
    _wait_text(summary, "Paragraph(s) 3 name no one and nowhere of the paragraph before.", 30_000)
    _wait_text(summary, "paragraph(s) 5 (in the first person, not the third)", 30_000)
    for plot in ("words_plot", "repetition_plot", "carry_plot", "voice_plot"):
        page.locator(f"#{plot}").first.wait_for(state="visible", timeout=30_000)
    assert "Carry-over per paragraph" in page.locator("#carry_plot").first.inner_text()
    assert "Voice per paragraph" in page.locator("#voice_plot").first.inner_text()
    # The open and the refresh each redraw every tab: wait until the page is idle, then for the charts to draw.
    page.get_by_text("processing").first.wait_for(state="hidden", timeout=120_000)
    page.wait_for_timeout(3000)
    page.screenshot(path=str(shots / "18-story-chart.png"), full_page=True)
